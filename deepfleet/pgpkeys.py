"""Pinned OpenPGP keys: a vendor's repository signing key is accepted only with the fingerprint
the vendor publishes, never on first use.

Standard library only, because the same source also runs on hosts (roles/packages.py sends it as
`python3 -c SOURCE URL DEST FINGERPRINTS`): it downloads the key, refuses it unless one of its
primary keys has a pinned fingerprint (v4: SHA-1 over 0x99, the body length and the public-key
packet's body, RFC 4880 §12.2), and only then writes DEST.
"""

import base64
import hashlib
import sys
import urllib.request


class PinError(ValueError):
    """A key whose fingerprint is not the pinned one; the message names both."""


def primary_fingerprints(data: bytes) -> list:
    """The fingerprints (upper-case hex) of the v4 primary keys in an armoured or binary key file."""
    raw = _dearmor(data)
    found, i = [], 0
    while i < len(raw):
        header = raw[i]
        i += 1
        if header & 0x40:  # new-format packet
            tag, first = header & 0x3F, raw[i]
            i += 1
            if first < 192:
                length = first
            elif first < 224:
                length, i = ((first - 192) << 8) + raw[i] + 192, i + 1
            else:
                length, i = int.from_bytes(raw[i:i + 4], "big"), i + 4
        else:  # old-format packet
            tag, size = (header >> 2) & 0x0F, {0: 1, 1: 2, 2: 4}.get(header & 3, 0)
            length, i = int.from_bytes(raw[i:i + size], "big"), i + size
        body, i = raw[i:i + length], i + length
        if tag == 6 and body[:1] == b"\x04":
            found.append(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper())
    return found


def check_pinned(data: bytes, expected, where: str) -> None:
    """Refuse `data` unless one of its primary keys has a fingerprint in `expected` (none: no pin)."""
    wanted = {fingerprint.replace(" ", "").upper() for fingerprint in expected if fingerprint}
    if not wanted:
        return
    found = primary_fingerprints(data)
    if not wanted & set(found):
        raise PinError(f"the signing key from {where} has fingerprint {', '.join(found) or '(none found)'}, "
                       f"not the pinned {', '.join(sorted(wanted))}; it was not installed. Check the mirror, "
                       "or set the repository's *_key_fingerprints to the fingerprint its vendor publishes")


def _dearmor(data: bytes) -> bytes:
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in text:
        return data
    block = text.split("-----BEGIN PGP PUBLIC KEY BLOCK-----", 1)[1].split("-----END", 1)[0]
    lines = [line.strip() for line in block.strip("\r\n").splitlines()]
    if "" in lines:  # armour headers (Version: ...) end with an empty line
        lines = lines[lines.index("") + 1:]
    return base64.b64decode("".join(line for line in lines if line and not line.startswith("=")))


def main(url: str, dest: str, fingerprints: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    try:
        check_pinned(data, fingerprints.split(","), url)
    except PinError as exc:
        sys.exit(f"deepfleet: {exc}")
    with open(dest, "wb") as out:
        out.write(data)


if __name__ == "__main__":
    main(*sys.argv[1:4])
