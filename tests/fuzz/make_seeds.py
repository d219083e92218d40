"""Writes a small seed corpus for fuzz_gguf with the gguf Python package."""
import pathlib
import sys

import gguf
import numpy as np


def main(out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out / "seed_model.gguf"), "llama")
    w.add_name("seed")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_token_list(["<s>", "</s>", "a", "b"])
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_tensor("a.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("b.weight", np.ones(32, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (out / "seed_header.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))


if __name__ == "__main__":
    main(sys.argv[1])
