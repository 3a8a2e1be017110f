// Reads an ONNX file's metadata_props (where charrnn-export puts the vocabulary and the config)
// without a protobuf library: the top level of ModelProto is walked field by field, and every
// field except metadata_props (number 14) is skipped by its wire type, the graph included.

const METADATA_PROPS = 14; // ModelProto.metadata_props: repeated StringStringEntryProto {key=1, value=2}

function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= bytes.length) throw new Error("truncated varint");
    const byte = bytes[pos++];
    value += (byte & 0x7f) * scale; // arithmetic, not <<: lengths may pass 2**31
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

// Calls visit(fieldNumber, bytes of a length-delimited field) for each field of one message.
function walk(bytes, visit) {
  let pos = 0;
  while (pos < bytes.length) {
    let key;
    [key, pos] = readVarint(bytes, pos);
    const field = Math.floor(key / 8);
    const wireType = key % 8;
    if (wireType === 0) [, pos] = readVarint(bytes, pos);
    else if (wireType === 1) pos += 8;
    else if (wireType === 5) pos += 4;
    else if (wireType === 2) {
      let length;
      [length, pos] = readVarint(bytes, pos);
      if (pos + length > bytes.length) throw new Error("truncated field");
      visit(field, bytes.subarray(pos, pos + length));
      pos += length;
    } else throw new Error(`unsupported wire type ${wireType}`);
  }
}

// {key: value} of an ONNX model's metadata_props; throws if the bytes are not a protobuf.
export function onnxMetadata(bytes) {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const props = {};
  walk(bytes, (field, entry) => {
    if (field !== METADATA_PROPS) return;
    let key = "";
    let value = "";
    walk(entry, (f, text) => {
      if (f === 1) key = decoder.decode(text);
      else if (f === 2) value = decoder.decode(text);
    });
    props[key] = value;
  });
  return props;
}
