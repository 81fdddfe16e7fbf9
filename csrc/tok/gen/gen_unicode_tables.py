"""Generates csrc/tok/tok_unicode_tables.c: the character classes exactly as the
reference library (Hugging Face `tokenizers`) sees them.

The reference classifies punctuation, nonspacing marks, control characters and
combining marks with Rust crates frozen at an old Unicode version, and its
normalization tables are older than utf8proc's, so characters assigned since
then behave differently (U+2E54 is punctuation to utf8proc but part of a word
to the reference).  Parity means matching the reference, so this script asks
the installed `tokenizers` package how it treats every code point and writes
the answers as sorted range tables.  Nothing is copied from its source.

    python3 csrc/tok/gen/gen_unicode_tables.py > csrc/tok/tok_unicode_tables.c

Needs `tokenizers`, a C compiler and libutf8proc (to find where the
reference's decompositions differ from utf8proc's).
"""
import os
import subprocess
import sys
import tempfile

import tokenizers
from tokenizers import normalizers, pre_tokenizers

CPS = [c for c in range(0x110000) if not (0xD800 <= c < 0xE000)]
SEP = "\x01"


def batched(fn, cps, wrap=lambda c: chr(c), sep=SEP):
    """fn over many single-character strings at once, split on sep (a
    character fn keeps and nothing normalizes into)."""
    out = {}
    todo = [c for c in cps if c != ord(sep)]
    for i in range(0, len(todo), 4000):
        chunk = todo[i:i + 4000]
        res = fn(sep.join(wrap(c) for c in chunk)).split(sep)
        assert len(res) == len(chunk)
        out.update(zip(chunk, res))
    out[ord(sep)] = fn(wrap(ord(sep)))
    return out


def ranges(cps):
    cps = sorted(cps)
    out = []
    for c in cps:
        if out and out[-1][1] + 1 == c:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def emit_ranges(name, cps, doc):
    r = ranges(cps)
    print(f"/* {doc} */")
    print(f"const uint32_t {name}[][2] = {{")
    for i in range(0, len(r), 6):
        print("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in r[i:i + 6]))
    print("};")
    print(f"const size_t {name}_n = {len(r)};\n")


def utf8proc_decomp(compat):
    src = r'''
#include <stdio.h>
#include <utf8proc.h>
int main(int argc, char **argv) {
    for (int c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        utf8proc_int32_t b[32]; int bc = 0;
        utf8proc_ssize_t k = utf8proc_decompose_char(c, b, 32, UTF8PROC_DECOMPOSE | (argc > 1 ? UTF8PROC_COMPAT : 0), &bc);
        printf("%d", c);
        for (int i = 0; i < k; i++) printf(" %d", b[i]);
        printf("\n");
    }
    return 0;
}
'''
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "d.c"), "w") as f:
        f.write(src)
    subprocess.run(["cc", "-O1", os.path.join(d, "d.c"), "-lutf8proc", "-o", os.path.join(d, "d")], check=True)
    out = subprocess.run([os.path.join(d, "d")] + (["k"] if compat else []), capture_output=True, text=True,
                         check=True).stdout
    res = {}
    for line in out.splitlines():
        v = list(map(int, line.split()))
        res[v[0]] = v[1:]
    return res


def utf8proc_lower():
    src = r'''
#include <stdio.h>
#include <utf8proc.h>
int main(void) {
    for (int c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        printf("%d %d\n", c, (int)utf8proc_tolower(c));
    }
    return 0;
}
'''
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "l.c"), "w") as f:
        f.write(src)
    subprocess.run(["cc", "-O1", os.path.join(d, "l.c"), "-lutf8proc", "-o", os.path.join(d, "l")], check=True)
    out = subprocess.run([os.path.join(d, "l")], capture_output=True, text=True, check=True).stdout
    return {int(a): int(b) for a, b in (line.split() for line in out.splitlines())}


def utf8proc_ccc():
    src = r'''
#include <stdio.h>
#include <utf8proc.h>
int main(void) {
    for (int c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c < 0xE000) continue;
        int k = utf8proc_get_property(c)->combining_class;
        if (k) printf("%d %d\n", c, k);
    }
    return 0;
}
'''
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "c.c"), "w") as f:
        f.write(src)
    subprocess.run(["cc", "-O1", os.path.join(d, "c.c"), "-lutf8proc", "-o", os.path.join(d, "c")], check=True)
    out = subprocess.run([os.path.join(d, "c")], capture_output=True, text=True, check=True).stdout
    return {int(a): int(b) for a, b in (line.split() for line in out.splitlines())}


def main():
    bert_pre = pre_tokenizers.BertPreTokenizer()
    # punctuation: a punctuation char is split off as its own piece
    punct = set()
    todo = [c for c in CPS]
    for i in range(0, len(todo), 4000):
        chunk = todo[i:i + 4000]
        for piece, _ in bert_pre.pre_tokenize_str(" ".join("a" + chr(c) + "a" for c in chunk)):
            if len(piece) == 1 and piece != "a":
                punct.add(ord(piece))
    # Rust regex \\w and \\s, as the Whitespace pre-tokenizer (\\w+|[^\\w\\s]+) sees them
    ws = pre_tokenizers.Whitespace()
    word, space = set(), set()
    for i in range(0, len(todo), 4000):
        chunk = todo[i:i + 4000]
        pieces = ws.pre_tokenize_str(" ".join("a" + chr(c) + "a" for c in chunk))
        # each probe gives "a?a" (word), "a","a" (space) or "a","?","a" (other)
        k = 0
        for c in chunk:
            p = pieces[k][0]
            if p == "a" + chr(c) + "a":
                word.add(c)
                k += 1
            elif k + 1 < len(pieces) and p == "a" and pieces[k + 1][0] == "a":
                space.add(c)
                k += 2
            else:
                assert p == "a" and pieces[k + 1][0] == chr(c) and pieces[k + 2][0] == "a", (hex(c), pieces[k:k + 3])
                k += 3
        assert k == len(pieces)
    # Rust char::is_numeric, as the Digits pre-tokenizer sees it
    digits = pre_tokenizers.Digits(individual_digits=True)
    numeric = set()
    for i in range(0, len(todo), 4000):
        chunk = todo[i:i + 4000]
        for piece, _ in digits.pre_tokenize_str("a".join(chr(c) for c in chunk)):
            if len(piece) == 1 and piece != "a":
                numeric.add(ord(piece))
    # control characters dropped by BertNormalizer's clean_text
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                                       lowercase=False)
    removed = batched(clean.normalize_str, CPS, sep="Q")
    control = {c for c, o in removed.items() if o == ""}
    # nonspacing marks dropped by BertNormalizer's accent stripping (chars NFD leaves alone)
    nfd = batched(normalizers.NFD().normalize_str, CPS)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True,
                                       lowercase=False)
    stripped = batched(strip.normalize_str, CPS, wrap=lambda c: "a" + chr(c))
    mn = {c for c, o in stripped.items() if nfd[c] == chr(c) and o == "a"}
    # combining marks dropped by the StripAccents normalizer
    sa = batched(normalizers.StripAccents().normalize_str, CPS, wrap=lambda c: "a" + chr(c))
    marks = {c for c, o in sa.items() if o == "a"}
    # decompositions: code points the reference leaves alone but utf8proc decomposes
    nfkd = batched(normalizers.NFKD().normalize_str, CPS)
    keep_d = {c for c, d in utf8proc_decomp(False).items() if d != [c] and nfd[c] == chr(c)}
    keep_kd = {c for c, d in utf8proc_decomp(True).items() if d != [c] and nfkd[c] == chr(c)}
    other_d = [c for c, d in utf8proc_decomp(False).items() if [ord(x) for x in nfd[c]] != d and c not in keep_d]
    other_kd = [c for c, d in utf8proc_decomp(True).items() if [ord(x) for x in nfkd[c]] != d and c not in keep_kd]

    # lowercase: single-character mappings where the reference (Rust's
    # to_lowercase) and utf8proc_tolower disagree
    low = batched(normalizers.Lowercase().normalize_str, CPS)
    ul = utf8proc_lower()
    lower_fix = sorted((c, ord(o)) for c, o in low.items() if len(o) == 1 and ord(o) != ul[c])
    multi = sorted(c for c, o in low.items() if len(o) != 1)

    # combining classes the reference does not know (it treats them as 0 and
    # does not reorder): probe each mark against one of a known class
    nfd_fn = normalizers.NFD().normalize_str
    ccc0 = set()
    for c, k in utf8proc_ccc().items():
        if k == 230:
            probe, swapped = "a" + chr(c) + "\u0334", "a\u0334" + chr(c)
        elif k < 230:
            probe, swapped = "a\u0301" + chr(c), "a" + chr(c) + "\u0301"
        else:
            probe, swapped = "a" + chr(c) + "\u0301", "a\u0301" + chr(c)
        if nfd_fn(probe) != swapped:
            ccc0.add(c)

    print("/* tok_unicode_tables.c: GENERATED by csrc/tok/gen/gen_unicode_tables.py from")
    print(f" * tokenizers {tokenizers.__version__}; do not edit.  Character classes as the reference")
    print(" * library applies them (its Unicode data is older than utf8proc's). */")
    print("#include <stddef.h>\n#include <stdint.h>\n")
    emit_ranges("tk_tab_punct", punct, "BertPreTokenizer / Punctuation: ASCII punctuation or P*")
    emit_ranges("tk_tab_word", word, "Rust regex \\w (Whitespace pre-tokenizer, single_word added tokens)")
    emit_ranges("tk_tab_space", space, "Rust regex \\s")
    emit_ranges("tk_tab_numeric", numeric, "Rust char::is_numeric (Digits pre-tokenizer)")
    emit_ranges("tk_tab_control", control, "BertNormalizer clean_text drops these (with U+0000 and U+FFFD)")
    emit_ranges("tk_tab_mn", mn, "BertNormalizer strip_accents drops these after NFD (Mn)")
    emit_ranges("tk_tab_marks", marks, "StripAccents drops these (combining marks)")
    emit_ranges("tk_tab_ccc0", ccc0, "combining class 0 to the reference (utf8proc gives them one)")
    emit_ranges("tk_tab_nfd_keep", keep_d, "NFD leaves these alone (utf8proc decomposes them)")
    emit_ranges("tk_tab_nfkd_keep", keep_kd, "NFKD leaves these alone (utf8proc decomposes them)")
    print(f"/* Lowercase where utf8proc_tolower differs; multi-character: {', '.join(hex(c) for c in multi)} */")
    print("const uint32_t tk_tab_lower_fix[][2] = {")
    for i in range(0, len(lower_fix), 6):
        print("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in lower_fix[i:i + 6]))
    if not lower_fix:
        print("    {0, 0},")
    print("};")
    print(f"const size_t tk_tab_lower_fix_n = {len(lower_fix)};\n")
    print(f"/* other per-character decomposition differences: NFD {len(other_d)}, NFKD {len(other_kd)} */")
    print(f"/* {', '.join(hex(c) for c in (other_d + other_kd)[:40])} */")


if __name__ == "__main__":
    sys.exit(main())
