"""Deterministic multilingual corpus for the tokenizer parity tests and benchmark.

`build_corpus(n)` returns n lines mixing scripts, emoji (with ZWJ sequences),
control characters, U+0000, U+FFFD, whitespace runs, very long words, numbers,
code, URLs and special tokens typed into the text.  Seeded, so every run and
every machine sees the same lines.
"""
import random

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.", "Don't stop believing!", "I'm here, you're there; we've won.",
    "Hello, world!", "It's a truth universally acknowledged...", "e.g. i.e. etc. Mr. Smith's cat",
    "UPPER lower MiXeD CaSe", "state-of-the-art, well-known", "What?! No way... (really)", "a  b   c    d",
]
LATIN = ["Café crème brûlée", "naïve façade déjà vu", "Ångström Øresund Æsir", "Straße Größe Fußball",
         "español niño año", "Português ação coração", "İstanbul ışık ğüşöç", "ǅemal ǈ ǋ", "Ǆ ĳ ﬁ ﬂ ﬀ"]
CYRILLIC = ["Привет, мир!", "Съешь же ещё этих мягких французских булок", "ЁЛКА ёлка"]
GREEK = ["Καλημέρα κόσμε", "ΟΔΥΣΣΕΥΣ ὀδυσσεύς", "σοφός ΣΟΦΟΣ"]
ARABIC = ["مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "٠١٢٣٤٥٦٧٨٩"]
HINDI = ["नमस्ते दुनिया", "हिन्दी भाषा", "क्षत्रिय"]
CJK = ["你好世界", "中文分词测试", "漢字と仮名", "𠀀𠀁 𪜀"]
KANA = ["こんにちは", "カタカナ テスト", "ｶﾀｶﾅ ﾃｽﾄ", "ゔ が ぱ"]
KOREAN = ["안녕하세요 세계", "한국어 형태소", "각"]
EMOJI = ["👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵", "😀😃😄", "🧑‍💻", "☕", "🥰"]
CONTROL = ["\x00", "\x01", "\x07", "\x1b[0m", "\x7f", "\u200b", "\u200d", "\u00ad", "\ufeff", "\ufffd", "\u2028",
           "\x85", "\u0301", "\ue000"]
SPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \t \n ", "\u00a0", "\u3000", "\u2009", "\u202f"]
NUMBERS = ["123", "3.14159", "1,000,000", "2024-01-15", "0x1F", "1e-9", "42nd", "①②③", "½ ¾", "²³", "Ⅻ"]
CODE = ["def f(x): return x**2", "for (int i = 0; i < n; ++i) { a[i] = b[i]; }", "if x != y && z >= 3:",
        "SELECT * FROM t WHERE id=1;", "<div class=\"a\">b</div>", "x = {'k': [1, 2, 3]}", "#include <stdio.h>",
        "snake_case camelCase PascalCase", "$HOME/path/to/file.txt", "a+b=c^d|e~f`g"]
URLS = ["https://example.com/path?q=1&r=2#frag", "http://www.test.org", "user@example.com", "ftp://files.x.y/z.tar.gz"]
LONG = ["a" * 120, "supercalifragilisticexpialidocious" * 4, "x" * 99, "é" * 101, "ab" * 60, "🙂" * 30,
        "Pneumonoultramicroscopicsilicovolcanoconiosis"]


def build_corpus(n=5000, specials=(), seed=1234):
    """Returns n lines; `specials` are token strings to sprinkle in (e.g. "[CLS]")."""
    rng = random.Random(seed)
    pools = [ENGLISH, LATIN, CYRILLIC, GREEK, ARABIC, HINDI, CJK, KANA, KOREAN, EMOJI, CONTROL, SPACE, NUMBERS,
             CODE, URLS, LONG]
    weights = [8, 4, 2, 2, 2, 2, 2, 2, 2, 3, 2, 3, 3, 3, 2, 1]
    specials = list(specials)
    seps = [" ", " ", " ", "", "\t", "\n", "  "]
    lines = []
    for i in range(n):
        k = rng.randint(1, 10)
        parts = []
        for _ in range(k):
            if specials and rng.random() < 0.08:
                parts.append(rng.choice(specials))
            else:
                pool = rng.choices(pools, weights)[0]
                parts.append(rng.choice(pool))
            parts.append(rng.choice(seps))
        line = "".join(parts)
        if i % 97 == 0:
            line = ""
        elif i % 89 == 0:
            line = " " * rng.randint(1, 5)
        lines.append(line)
    return lines
