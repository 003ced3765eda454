"""Damaging a saved checkpoint the way a bad disk would: one bit of one weight, in the file."""
import struct
import zipfile


def flip_exponent_bit_in_file(path, tensor):
    """Flip the top exponent bit of ``tensor``'s first float32 inside the saved zip, in place.

    The tensor's storage is found as the stored (uncompressed) zip entry holding exactly its
    bytes; its data starts after the 30-byte local header, the name and the extra field.
    """
    want = tensor.detach().contiguous().numpy().tobytes()
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and z.read(i) == want)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        at = info.header_offset + 30 + name_len + extra_len + 3   # little-endian: byte 3 holds sign+exponent
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x40]))
