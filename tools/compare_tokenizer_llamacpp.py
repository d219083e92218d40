#!/usr/bin/env python3
"""Compare kiln's tokenizer with llama.cpp's on one GGUF model.

Generates a deterministic corpus of varied strings (prose, code, emoji, CJK,
mixed scripts, long whitespace runs, digits, special-token text, invalid
UTF-8), tokenizes each with `kiln tokenize` and with llama.cpp through
llama-cpp-python (vocab_only=True), and reports how many id sequences are
identical. It also checks detokenize(tokenize(s)) == s through `kiln
detokenize` for the valid UTF-8 strings.

Needs: pip install llama-cpp-python (not part of the default test run).

  python3 tools/compare_tokenizer_llamacpp.py [--model M.gguf] [--kiln build/bin/kiln] [-n 1200]

Exit status 0 when every sequence matches and every round trip holds.
"""
import argparse
import os
import pathlib
import random
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

WORDS = ("the of and to in is you that it he was for on are as with his they I at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her "
         "would make like him into time has look two more write go see number no way could people "
         "tokenizer llama kiln GGUF don't won't it's we're they've I'm she'll he'd O'Neil").split()
CODE = [
    "def f(x):\n    return x * 2  # double\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "const x = await fetch(`/api/v1/items?id=${id}`);\n",
    "<div class=\"row\"><span>&nbsp;</span></div>\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "#include <vector>\nstd::vector<int> v{1,2,3};\n",
    "if __name__ == '__main__':\n    main()\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }\n",
    "    \t  indented\t\tline   \n",
    "{\"key\": [1, 2.5, -3e10, null, true], \"s\": \"a\\\\nb\"}\n",
]
EMOJI = ["🦙", "🚀", "😶‍🌫️", "👍🏽", "✅", "❤️", "🇫🇷", "👨‍👩‍👧‍👦", "🤖", "😀", "🔥", "🎉"]
CJK = ["日本語", "中文文本", "한국어", "テキスト", "我想在apple工作", "漢字かな交じり文", "ひらがな", "カタカナ"]
SCRIPTS = ["Русский текст", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย", "Tiếng Việt",
           "Ünïcödé", "e\u0301 combining", "ﬁ ligature", "Straße", "Ωmega", "½ ⅓ ⅔", "€100",
           "\u00a0nbsp\u2003em\u3000ideo", "\u200bzero\u200dwidth"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<|eot_id|>", "<reponame>"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "\u00a0", "\u3000"]
INVALID = [b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\xa6", b"\xc0\x80",
           b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xbf\xbf"]


def make_corpus(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    generators = [
        lambda: words(rng.randint(1, 30)) + rng.choice([".", "!", "?", "", "\n"]),
        lambda: "".join(rng.choice(CODE) for _ in range(rng.randint(1, 3))),
        lambda: " ".join(rng.choice(EMOJI + WORDS) for _ in range(rng.randint(1, 12))),
        lambda: "".join(rng.choice(CJK + [" ", "，", "。", "1", "a"]) for _ in range(rng.randint(1, 10))),
        lambda: " ".join(rng.choice(SCRIPTS + WORDS) for _ in range(rng.randint(1, 8))),
        lambda: words(2) + " " * rng.randint(2, 200) + words(2) + "\n" * rng.randint(1, 20),
        lambda: "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 30))),
        lambda: " ".join(str(rng.randint(0, 10 ** rng.randint(1, 15))) for _ in range(rng.randint(1, 6)))
        + rng.choice(["", ".5", ",000", "%", "e-3"]),
        lambda: words(3) + rng.choice(SPECIALS) + words(2) + rng.choice(SPECIALS),
        lambda: "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                        rng.randint(0x3000, 0x9fff), rng.randint(0x1f300, 0x1faff)]))
                        for _ in range(rng.randint(1, 25))),
        lambda: words(3) + "'s " + words(1) + "'LL " + words(1) + "'Ve",
    ]
    fixed = ["", " ", "\n", "Hello world", " Hello world", "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
             "3", "33", "333", "3333", "33333333", "   Hello\n    Hello", "\t\n", "' era"]
    out.extend(s.encode() for s in fixed)
    while len(out) < n:
        r = rng.random()
        if r < 0.08:
            # Invalid UTF-8 spliced into valid text.
            parts = [words(rng.randint(0, 3)).encode(), rng.choice(INVALID),
                     rng.choice(EMOJI + CJK + WORDS).encode(), rng.choice(INVALID)]
            out.append(b"".join(parts[: rng.randint(2, 4)]))
        else:
            out.append(rng.choice(generators)().encode())
    return out


def kiln_tokenize(kiln, model, data: bytes, flags) -> list[int]:
    res = subprocess.run([kiln, "tokenize", "-m", model, *flags], input=data, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"kiln tokenize failed: {res.stderr.decode(errors='replace')}")
    return [int(x) for x in res.stdout.split()]


def kiln_detokenize(kiln, model, ids) -> bytes:
    res = subprocess.run([kiln, "detokenize", "-m", model], input=" ".join(map(str, ids)).encode(),
                         capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"kiln detokenize failed: {res.stderr.decode(errors='replace')}")
    return res.stdout


def time_llamacpp(llm) -> int:
    """llama.cpp's encode throughput (CPU time, best of 5) on the inputs of the kiln bench."""
    import time
    for name, path in [("english", "/usr/share/common-licenses/GPL-3"),
                       ("code", "/usr/include/c++/12/bits/stl_algo.h")]:
        text = pathlib.Path(path).read_bytes()
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            ids = llm.tokenize(text, add_bos=False, special=False)
            best = min(best, time.process_time() - t0)
        print(f"llama.cpp {name}: {len(text) / best / 2**20:.2f} MiB/s CPU time, {len(ids)} tokens")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    build = pathlib.Path(os.environ.get("KILN_BUILD_DIR", REPO / "build"))
    ap.add_argument("--kiln", default=str(build / "bin" / "kiln"))
    ap.add_argument("-n", type=int, default=1200, help="corpus size (default 1200)")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--show", type=int, default=5, help="mismatches to print")
    ap.add_argument("--speed", action="store_true",
                    help="only time llama.cpp's tokenizer on the inputs of bench/tokenizer_bench.cpp")
    args = ap.parse_args()

    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed (pip install llama-cpp-python)", file=sys.stderr)
        return 2
    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    if args.speed:
        return time_llamacpp(llm)
    corpus = make_corpus(args.n, args.seed)

    # Modes: (kiln flags, llama-cpp-python add_bos, special)
    modes = [("plain", [], False, False), ("parse-special", ["--parse-special"], False, True),
             ("add-special", ["--add-special"], True, False)]
    total_mismatch = 0
    for name, flags, add_bos, special in modes:
        # The corpus for the extra modes is a tenth: they only change the edges.
        texts = corpus if name == "plain" else corpus[: max(100, len(corpus) // 10)]
        mismatches = []
        for data in texts:
            ours = kiln_tokenize(args.kiln, args.model, data, flags)
            theirs = llm.tokenize(data, add_bos=add_bos, special=special)
            if ours != theirs:
                mismatches.append((data, ours, theirs))
        total_mismatch += len(mismatches)
        print(f"{name}: {len(texts) - len(mismatches)}/{len(texts)} identical "
              f"({100.0 * (len(texts) - len(mismatches)) / len(texts):.2f}%)")
        for data, ours, theirs in mismatches[: args.show]:
            print(f"  text={data!r}\n    kiln     ={ours}\n    llama.cpp={theirs}")

    # Whole documents: long inputs exercise the splitter and merges at scale.
    for doc in [pathlib.Path("/usr/share/common-licenses/GPL-3"),
                pathlib.Path("/usr/include/c++/12/bits/stl_algo.h"), REPO / "tokenizer" / "tokenizer.cpp"]:
        if not doc.exists():
            continue
        data = doc.read_bytes()
        ours = kiln_tokenize(args.kiln, args.model, data, [])
        theirs = llm.tokenize(data, add_bos=False, special=False)
        same = ours == theirs
        total_mismatch += 0 if same else 1
        print(f"document {doc} ({len(data)} bytes, {len(theirs)} tokens): "
              f"{'identical' if same else 'DIFFERENT'}")

    # Round trip on the valid UTF-8 strings.
    bad_round_trips = []
    n_valid = 0
    for data in corpus:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        n_valid += 1
        ids = kiln_tokenize(args.kiln, args.model, data, [])
        if kiln_detokenize(args.kiln, args.model, ids) != data:
            bad_round_trips.append(data)
    print(f"round trip: {n_valid - len(bad_round_trips)}/{n_valid} valid UTF-8 strings restored")
    for data in bad_round_trips[: args.show]:
        print(f"  text={data!r}")
    return 0 if total_mismatch == 0 and not bad_round_trips else 1


if __name__ == "__main__":
    sys.exit(main())
