"""Shared pytest fixtures: where the kiln binary, the repository and the models are."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_DIR = pathlib.Path(os.environ.get("KILN_BUILD_DIR", REPO_ROOT / "build"))
DEFAULT_MODEL = REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_Q4_K_M = REPO_ROOT / "models" / "SmolLM2-135M-Instruct-Q4_K_M.gguf"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    return BUILD_DIR


@pytest.fixture(scope="session")
def kiln_bin() -> pathlib.Path:
    path = BUILD_DIR / "bin" / "kiln"
    if not path.exists():
        pytest.fail(f"{path} does not exist: build first (tools/test.sh does)")
    return path


@pytest.fixture(scope="session")
def default_model() -> pathlib.Path:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"default model missing: {DEFAULT_MODEL} (tools/fetch_model.sh fetches it)")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def default_model_q4_k_m() -> pathlib.Path:
    if not DEFAULT_MODEL_Q4_K_M.exists():
        pytest.skip(f"{DEFAULT_MODEL_Q4_K_M} missing (tools/setup.sh makes it with kiln quantize)")
    return DEFAULT_MODEL_Q4_K_M


@pytest.fixture(scope="session", autouse=True)
def panel_cache_dir(tmp_path_factory) -> pathlib.Path:
    """The kiln processes the tests start keep their panel cache (engine/panel_cache.h) here,
    not in ~/.cache/kiln: the tests' temporary models would leave files there."""
    path = tmp_path_factory.mktemp("panel-cache")
    os.environ["KILN_CACHE_DIR"] = str(path)
    return path
