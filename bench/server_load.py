#!/usr/bin/env python3
"""Load test for `kiln serve`: real HTTP over loopback, asyncio clients, bounded.

Starts `kiln serve` on a free port (or uses --url), then measures
  1. one client alone: generation tokens/s of a streamed chat completion
     (tokens after the first / time after the first), next to `kiln bench` tg;
  2. N concurrent streaming clients (default 8): aggregate generated tokens/s;
  3. time to first token (p50/p99) over every request, and the error count.

Every request forces exactly --max-tokens tokens (end-of-turn tokens get a
-100 logit bias) at temperature 0, so runs are comparable. One single and one
concurrent request go first, untimed (as kiln bench warms up before it times).
Then --rounds rounds each time --single-runs lone requests and one round of
concurrent ones, so a ratio compares measurements made seconds apart (this
machine's memory speed swings within minutes); the ratio reported is the median
of the rounds' ratios. Each round starts with a `kiln bench` run (same model,
threads and engine flags, tg at the depth of the lone request's prompt: the
positions its stream decodes at) while the server idles, and the single stream
is compared with it: the median of the rounds' (lone requests / kiln bench)
ratios.

  python3 bench/server_load.py --kiln build/bin/kiln -m models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import asyncio
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PROMPTS = ["Tell me a story about a dragon.", "Explain how rain forms.",
           "Write a poem about the sea.", "Describe a busy city street.",
           "What makes a good friend?", "Explain photosynthesis simply.",
           "Describe your favourite meal.", "How do airplanes fly?"]


async def stream_chat(host, port, model, prompt, max_tokens, end_tokens):
    """One streamed chat completion; returns (ttft, t_done, token_times, completion_tokens,
    prompt_tokens)."""
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": max_tokens, "temperature": 0,
        "logit_bias": {str(t): -100 for t in end_tokens},
    }).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    status = (await reader.readline()).decode()
    if " 200 " not in status:
        raise RuntimeError("HTTP status " + status.strip())
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # headers
    # Events are only timed while the stream runs and decoded after it ends: the client
    # shares the machine's cores with the server, so it does as little as it can meanwhile.
    events, buf = [], b""
    while True:
        size_line = await reader.readline()  # chunked transfer encoding
        if not size_line:
            break
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            break
        buf += await reader.readexactly(size)
        await reader.readexactly(2)
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            events.append((time.perf_counter() - t0, event))
    writer.close()
    token_times, usage = [], None
    for t, event in events:
        data = event.decode()[len("data: "):]
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices", []):
            if c["delta"].get("content"):
                token_times.append(t)
    if usage is None or not token_times:
        raise RuntimeError("stream ended without content or usage")
    return (token_times[0], time.perf_counter() - t0, token_times, usage["completion_tokens"],
            usage["prompt_tokens"])


def gen_rate(results):
    """Tokens/s after each stream's first token, summed over concurrent streams' union window."""
    tokens = sum(r[3] - 1 for r in results)
    start = min(r[0] for r in results)
    end = max(r[2][-1] for r in results)
    return tokens / (end - start)


async def run_concurrent(args, host, port, model, n, end_tokens):
    t0 = time.perf_counter()
    tasks = [stream_chat(host, port, model, PROMPTS[i % len(PROMPTS)], args.max_tokens, end_tokens)
             for i in range(n)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    return ok, errors, wall


# Engine flags of --serve-args that change decode speed (with the number of values each
# takes): kiln bench gets them too, so the single-stream comparison is against the same
# engine configuration.
BENCH_FLAGS = {"--batch-gemm": 1, "--act-precision": 1, "--kv-type": 1, "--precise": 0,
               "--hugepage-weights": 0}


def bench_flags(serve_args):
    words, out, i = shlex.split(serve_args), [], 0
    while i < len(words):
        n = BENCH_FLAGS.get(words[i])
        if n is not None:
            out += words[i:i + 1 + n]
            i += n
        i += 1
    return out


def kiln_bench_tg(kiln, model, n, depth, threads, flags):
    out = subprocess.run([kiln, "bench", "-m", model, "-p", "0", "-n", str(n), "-d", str(depth),
                          "-r", "3", "-t", str(threads), "--json", *flags],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["tg_tps"])


def percentile(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kiln", default="build/bin/kiln")
    ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--url", help="use a running server (http://127.0.0.1:PORT) instead")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--single-runs", type=int, default=2, help="lone requests per round")
    ap.add_argument("--rounds", type=int, default=4,
                    help="rounds of --single-runs lone requests then --clients concurrent ones")
    ap.add_argument("--no-kiln-bench", action="store_true")
    ap.add_argument("--serve-args", default="",
                    help="more arguments for kiln serve, e.g. \"--cache-prompt --prefill-chunk 64\"")
    args = ap.parse_args()
    if args.single_runs < 1 or args.rounds < 1 or args.clients < 1:
        ap.error("--single-runs, --rounds and --clients must be at least 1")

    proc = None
    if args.url:
        m = re.match(r"http://([^:/]+):(\d+)", args.url)
        host, port = m.group(1), int(m.group(2))
    else:
        log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        proc = subprocess.Popen([args.kiln, "serve", "-m", args.model, "--port", "0",
                                 "--parallel", str(args.clients), "-t", str(args.threads),
                                 "-c", "512", *shlex.split(args.serve_args)],
                                stdout=log, stderr=subprocess.STDOUT)
        host, port = "127.0.0.1", None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            log.seek(0)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
            port = int(found.group(1)) if found else None
            time.sleep(0.05)
    try:
        base = f"http://{host}:{port}"
        for _ in range(600):
            try:
                if urllib.request.urlopen(base + "/health").status == 200:
                    break
            except Exception:
                time.sleep(0.1)
        model = json.load(urllib.request.urlopen(base + "/v1/models"))["data"][0]["id"]
        end_tokens = [0, 1, 2]  # SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>

        # kiln bench decodes at the depth the lone stream does: after its prompt.
        depth = 0

        def bench_tg():
            if args.no_kiln_bench or args.url:
                return None
            return kiln_bench_tg(args.kiln, args.model, args.max_tokens, depth, args.threads,
                                 bench_flags(args.serve_args))

        def run(n):
            return asyncio.run(run_concurrent(args, host, port, model, n, end_tokens))

        for n in (1, args.clients):  # warm-up, untimed
            ok, errors, _ = run(n)
            if errors:
                raise errors[0]
            if n == 1:
                depth = ok[0][4]
        single_rates, conc_rates, ratios, ttfts, n_errors, n_ok = [], [], [], [], 0, 0
        bench_rates, single_ratios = [], []
        for _ in range(args.rounds):
            tg_round = bench_tg()
            round_single = []
            for _ in range(args.single_runs):
                ok, errors, _ = run(1)
                if errors:
                    raise errors[0]
                round_single.append(gen_rate(ok))
                ttfts.append(ok[0][0])
                n_ok += 1
            ok, errors, _ = run(args.clients)
            n_errors += len(errors)
            n_ok += len(ok)
            for e in errors:
                print("error:", e, file=sys.stderr)
            single_rates.extend(round_single)
            if tg_round is not None:
                bench_rates.append(tg_round)
                single_ratios.append(statistics.median(round_single) / tg_round)
            if ok:
                conc_rates.append(gen_rate(ok))
                ttfts.extend(r[0] for r in ok)
                ratios.append(conc_rates[-1] / statistics.median(round_single))
        one_rate = statistics.median(single_rates)
        agg = statistics.median(conc_rates) if conc_rates else 0.0
        ratio = statistics.median(ratios) if ratios else 0.0
        tg = statistics.median(bench_rates) if bench_rates else None

        print(f"model: {model}; {args.max_tokens} tokens per request, temperature 0")
        if tg is not None:
            print(f"kiln bench tg{args.max_tokens} @ d{depth}:     {tg:.1f} tokens/s (median of "
                  f"{len(bench_rates)}: {min(bench_rates):.1f} .. {max(bench_rates):.1f})")
            print(f"1 stream / kiln bench:         {statistics.median(single_ratios):.0%} "
                  "(median of the rounds: " + ", ".join(f"{r:.0%}" for r in single_ratios) + ")")
        print(f"1 stream through the server:   {one_rate:.1f} tokens/s (median of "
              f"{len(single_rates)}: {min(single_rates):.1f} .. {max(single_rates):.1f})")
        print(f"{args.clients} concurrent streams:         {agg:.1f} tokens/s aggregate "
              f"(median of {len(conc_rates)})")
        print(f"{args.clients} streams / 1 stream:       {ratio:.2f}x (median of the rounds: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ")")
        print(f"time to first token:           p50 {1000 * percentile(ttfts, 0.5):.0f} ms, "
              f"p99 {1000 * percentile(ttfts, 0.99):.0f} ms over {len(ttfts)} requests")
        print(f"requests: {n_ok} ok, {n_errors} errors")
        return 0 if n_errors == 0 else 1
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
