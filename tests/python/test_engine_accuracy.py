"""Accuracy on the default model over >= 2,000 positions of varied text (tools/reference/corpus.txt):
kiln vs the numpy float64 reference, and the same for llama.cpp on the same tokens.
Slow (the float64 reference over 2,000+ positions takes minutes): pytest -m slow.

Targets from issue 5: top-1 >= 99% and mean KL < 1e-3 vs the reference; in any case a mean KL no
worse than llama.cpp's. With the default int8 activations the first is marked xfail (the
activation rounding of 8-bit blocks alone costs about that much; llama.cpp misses it the same
way; see bench/RESULTS.md); the precise mode (--precise: int16 activations as two int8 planes)
must meet it, on the Q4_1 file and on our Q4_K_M. The float64 reference is computed once per
model and shared by the runs on that model.
"""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


# Per model, the workdir that caches its reference logits (accuracy.py's --workdir).
_REFERENCE_DIRS: dict = {}


def run_accuracy(repo_root, kiln_bin, model, tmp_path_factory, *extra) -> dict:
    work = _REFERENCE_DIRS.setdefault(str(model), tmp_path_factory.mktemp("accuracy"))
    out = work / f"result{len(list(work.glob('result*.json')))}.json"
    subprocess.run([sys.executable, str(repo_root / "tools/reference/accuracy.py"), "-m",
                    str(model), "--kiln", str(kiln_bin), "--workdir", str(work), "--json", str(out),
                    *extra], check=True)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def accuracy(kiln_bin, repo_root, default_model, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    return run_accuracy(repo_root, kiln_bin, default_model, tmp_path_factory)


@pytest.fixture(scope="module", params=["q4_1", "q4_k_m"])
def precise_accuracy(request, kiln_bin, repo_root, tmp_path_factory):
    model = request.getfixturevalue("default_model" if request.param == "q4_1"
                                    else "default_model_q4_k_m")
    return run_accuracy(repo_root, kiln_bin, model, tmp_path_factory, "--no-llamacpp",
                        "--kiln-args=--precise")


def test_enough_positions(accuracy):
    assert accuracy["positions"] >= 2000


def test_no_worse_than_llamacpp(accuracy):
    kiln, llama = accuracy["kiln_vs_reference"], accuracy["llamacpp_vs_reference"]
    # 10% slack: both sides' 8-bit activation rounding lands differently on each position.
    assert kiln["mean_kl"] <= 1.1 * llama["mean_kl"], (kiln, llama)
    assert kiln["top1_agreement"] >= llama["top1_agreement"] - 0.01, (kiln, llama)


@pytest.mark.xfail(reason="needs more precise matmul activations (issue 5 bound)", strict=False)
def test_issue_bound(accuracy):
    s = accuracy["kiln_vs_reference"]
    assert s["top1_agreement"] >= 0.99 and s["mean_kl"] < 1e-3, s


def test_issue_bound_precise(precise_accuracy):
    s = precise_accuracy["kiln_vs_reference"]
    assert precise_accuracy["kiln_args"] == ["--precise"]
    assert precise_accuracy["positions"] >= 2000
    assert s["top1_agreement"] >= 0.99 and s["mean_kl"] < 1e-3, s


def test_greedy_matches_llamacpp_or_diverges_at_near_tie(accuracy):
    for g in accuracy["greedy"]:
        if g["first_divergence"] is None:
            continue
        assert g.get("near_tie", False), g
