"""lm-evaluation-harness reads adept_cpt's output directory with its own ``hf`` backend, offline.

The task is local: a YAML file under ``include_path`` and a 10-row jsonl cloze built from the
demo's held-out Austen text (which continuation of a passage is the real one). The reference
is our own torchtune model loaded from the same directory: lm-eval's per-choice
log-likelihoods must equal the ones it computes, and the accuracy must follow from them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from evaluation_fixtures import GENERAL_HELDOUT, one_torch_thread, tiny_adapted_run

from adept_components.checkpointing import HFCheckpointer
from adept_components.models import model_from_hf_config

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the test extra")
from lm_eval import evaluator  # noqa: E402

from adept_components.evaluation import harness  # noqa: E402

TASK = "adept_demo_cloze"
ROWS = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def final_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_adapted_run(tmp_path_factory) / "final"


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """No network, no git, no environment survey: lm-eval metadata only, results unchanged."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        import datasets

        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(evaluator, "get_git_commit_hash", lambda: None)
        mp.setattr(evaluator, "add_env_info", lambda results: None)
        yield


def write_cloze_task(directory: Path) -> list[dict[str, Any]]:
    """A multiple-choice task: 12 words of a passage, then its next 4 words or another's."""
    passages = [p.split() for p in GENERAL_HELDOUT.read_text().split("\n\n")]
    passages = [words for words in passages if len(words) >= 16][: ROWS + 2]
    rows = []
    for i in range(ROWS):
        choices = [" ".join(passages[(i + k) % len(passages)][12:16]) for k in (1, 2)]
        choices.insert(i % 3, " ".join(passages[i][12:16]))
        rows.append({"context": " ".join(passages[i][:12]), "choices": choices, "label": i % 3})
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return rows


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory, offline: Any) -> tuple[Path, list, Any]:
    directory = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = write_cloze_task(directory)
    return directory, rows, harness.task_manager(directory)


def reference_loglikelihoods(model_dir: Path, rows: list[dict[str, Any]]) -> list[list[float]]:
    """log p(" " + choice | context) from our torchtune model, tokenized as lm-eval does."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = model_from_hf_config(str(model_dir), max_seq_len=128)
    HFCheckpointer(str(model_dir), str(model_dir)).load_into(model)
    model.eval()
    result = []
    for row in rows:
        context = tokenizer(row["context"], add_special_tokens=False).input_ids
        lls = []
        for choice in row["choices"]:
            whole = tokenizer(f"{row['context']} {choice}", add_special_tokens=False).input_ids
            continuation = whole[len(context) :]
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]]))[0, -len(continuation) :]  # [c, v]
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            lls.append(sum(logprobs[j, t].item() for j, t in enumerate(continuation)))
        result.append(lls)
    return result


@pytest.mark.slow
def test_lm_eval_scores_the_output_directory(final_dir: Path, task: tuple) -> None:
    directory, rows, manager = task
    kwargs = dict(tasks=[TASK], task_manager=manager, batch_size=4, device="cpu")
    # lm-eval's own entry point, as its CLI calls it: no wrapper, no edits to the directory.
    first = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={final_dir},dtype=float32",
        log_samples=True,
        **kwargs,
    )
    acc = first["results"][TASK]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert first["n-samples"][TASK]["effective"] == ROWS

    expected = reference_loglikelihoods(final_dir, rows)
    samples = sorted(first["samples"][TASK], key=lambda s: s["doc_id"])
    for sample, lls in zip(samples, expected, strict=True):
        got = [ll for ll, _ in sample["filtered_resps"]]
        assert got == pytest.approx(lls, abs=1e-3)
    picked = [max(range(3), key=lls.__getitem__) for lls in expected]
    assert acc == sum(p == row["label"] for p, row in zip(picked, rows, strict=True)) / ROWS

    # The wrapper runs the same evaluation; the result is deterministic.
    second = harness.evaluate_hf(
        final_dir, [TASK], include_path=directory, batch_size=4, dtype="float32", manager=manager
    )
    assert second["results"][TASK] == first["results"][TASK]


def test_unknown_task_names_the_close_ones(task: tuple) -> None:
    _, _, manager = task
    with pytest.raises(ValueError, match=r"'adept_demo_clozee' \(did you mean adept_demo_cloze"):
        harness.check_tasks(["mmlu", "adept_demo_clozee"], manager)
    with pytest.raises(ValueError, match=r"'medqa' \(did you mean medqa_4options"):
        harness.check_tasks(["medqa"], manager)
    assert harness.check_tasks(["mmlu", "cmmlu", "gsm8k", TASK], manager) == [
        "mmlu",
        "cmmlu",
        "gsm8k",
        TASK,
    ]


def test_harness_cli_bad_input_is_one_line(
    final_dir: Path,
    task: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory, _, manager = task
    monkeypatch.setattr(harness, "task_manager", lambda include_path=None: manager)
    monkeypatch.delenv("ADEPT_DEBUG", raising=False)
    out = tmp_path / "results.json"
    cases = [
        ([str(final_dir), "--tasks", "no_such_task"], "unknown lm-eval task(s): 'no_such_task'"),
        ([str(tmp_path / "nope"), "--tasks", TASK], "does not exist"),
        ([str(directory), "--tasks", TASK], "has no config.json"),
    ]
    for argv, message in cases:
        assert harness.main([*argv, "--include_path", str(directory), "--output", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
