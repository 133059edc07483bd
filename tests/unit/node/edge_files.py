"""Small input files that exercise every rule of counting and of the `_OUTPUT` file (shared by tests)."""

from __future__ import annotations

import codecs

EDGE_FILES: dict[str, bytes] = {
    "empty.txt": b"",
    "bom-only.txt": codecs.BOM_UTF8,
    "bom.txt": codecs.BOM_UTF8 + "Kůň kůň KŮŇ pes\n".encode(),
    "short-bom-prefix.txt": b"\xef\xbb",
    "undecodable.txt": b"caf\xe9 caf\xc3\xa9 \xff\xfe ok ok \x80x \xe2\x82",
    "ties.txt": b"zeta alpha Zeta ALPHA beta beta gamma delta delta",
    "unicode.txt": "„Žluťoučký kůň“ — Straße STRASSE 日本語 😀 😀 a\u00a0b\u2003c\x1cd ǅungla".encode(),
    "punctuation-only.txt": b'... --- !!! ,,, "\'"',
    "whitespace-only.txt": b" \n\t\r\n  \x0b\x0c",
    "dir with space/ünï cødé name.txt": b"Ship, said Ship. ship ship!\n",
    "many-words.txt": b" ".join(f"w{index % 37} W{index % 11}".encode() for index in range(3000)),
}
