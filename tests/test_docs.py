"""Every command in README.md and docs/*.md is exercised: the lines of their ```bash blocks (with ``\\``
continuations joined) are extracted, and each one is either

* **run here** (:class:`Run`), in one temporary work folder, in-process, with placeholders replaced by the
  repository's real data (``demo/``) and tiny models in the real file formats (``tests/integration/tiny_models.py``,
  ``--config tiny``), and checked for exit code 0 and the files it promises; or
* **covered elsewhere** (:class:`Elsewhere`) when it cannot run in the default suite (a GPU, real weights, several
  processes, a real ComfyUI checkout, real-size benchmarks, downloads): the reason is written down, the tests (or
  ``.ci/run``) that run it are named and must exist, and its arguments are parsed by the real argparse parser.

A command in the docs that is not in :data:`COMMANDS` fails :func:`test_every_docs_command_is_exercised` with a
sentence saying what to add; an entry whose command left the docs fails it too. The README's first two blocks are
its two commands: set up + the preview (whose preview part runs here exactly as written), and the test command that
``.ci/run`` runs.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The pages in reading order (training writes what evaluation reads).
PAGES = ("README.md", "docs/comfyui.md", "docs/modes.md", "docs/training.md", "docs/evaluation.md",
         "docs/development.md", "docs/synth.md")
README_CMD1 = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e .[test] && python -m surgsora preview '
               '--image demo/surgsora_endovis_frame6.png --tracks demo/tracks_endovis.json --masks '
               'demo/endovis17/mask_left_instrument_f06.png demo/endovis17/mask_right_instrument_f06.png --frames 14 '
               '--out preview.mp4 --draw-tracks')
README_CMD2 = ". .venv/bin/activate && python -m pytest -q tests"

# Placeholders in the docs and what stands for them here (paths relative to the work folder, see `work`).
FRAME = {"FRAME.png": "demo/surgsora_endovis_frame6.png", "TRACKS.json": "demo/tracks_endovis.json"}
FAST_GENERATE = ("--size", "128x64", "--frames", "4", "--steps", "1")  # later flags win in argparse
FAST_TTM = FAST_GENERATE + ("--steps", "2")  # dual-clock: --t-weak / --t-strong are fractions of these steps
# The tiny CMP decodes at its real working size (384x384), the slowest step here; tests/test_cli.py and
# tests/test_train_stage2.py run generate, stage 2 and sample with it.
ANALYTIC = ("--decoder", "analytic")
FAST_PREPROCESS = ("--frames", "4", "--size", "64", "--clip-stride", "20", "--depth-input-size", "70",
                   "--regions", "none")  # one 4-frame clip of the 20-frame demo clip; no SAM prompting per guide point
TINY_SVD = ("--svd",)  # the real-size SVD file is replaced by `--config tiny` (tiny random SVD + adapter)


@dataclass(frozen=True)
class Run:
    """Run here, in the shared work folder. `subs` replaces whole tokens (placeholders -> fixtures), `drop` removes
    flags with their value, `extra` is appended (lower sizes, frames and steps: later flags win), `outputs` are the
    files the command promises (with their frame count for videos), `after` the commands whose outputs it reads."""

    subs: dict = field(default_factory=dict)
    drop: tuple = ()
    extra: tuple = ()
    outputs: tuple = ()
    after: tuple = ()
    expect: dict = field(default_factory=dict)  # keys of the JSON line the command prints last -> expected values
    says: tuple = ()  # what its output must say
    setup_by_ci: bool = False  # a `&&` chain whose set-up steps .ci/run runs: only its last step runs here


@dataclass(frozen=True)
class Elsewhere:
    """Cannot run in the default suite: `why`, and what runs it (`by`: tests as file::function, or .ci/run)."""

    why: str
    by: tuple
    parse: bool = True  # parse its arguments with the real parser


def models(kind: str) -> dict:
    return {"ComfyUI/models": f"tiny/{kind}"}


AVERAGE = ("python -m surgsora preview --image demo/endovis17/clip.mp4 --frame-index 6 --tracks demo/tracks_endovis.json "
           "--frames 14 --out average.mp4 --warp average")
GEN_ADAPTER = ("python -m surgsora generate --image demo/surgsora_endovis_frame6.png --tracks demo/tracks_endovis.json "
               "--models ComfyUI/models --out results/video.mp4")
GEN_MOFA = ("python -m surgsora generate --image demo/surgsora_endovis_frame6.png --tracks demo/tracks_endovis.json "
            "--models ComfyUI/models --frames 25 --out mofa.mp4")
GEN_TTM = ("python -m surgsora generate --mode ttm --image demo/surgsora_endovis_frame6.png --tracks "
           "demo/tracks_endovis.json --models ComfyUI/models --frames 21 --out ttm.mp4")
PREPROCESS = ("python -m train preprocess --out cache/ videos/ --sam models/sams/sam_vit_b_01ec64.pth --depth "
              "models/depthanything/depth_anything_v2_vits.pth --frames 21 --size 256 --fit pad")
STAGE1 = ("python -m train fit --data cache/ --svd models/checkpoints/svd_xt.safetensors --out runs/stage1 --stage 1 "
          "--max-steps 20000 --checkpoint-every 500 --validate-every 1000")
STAGE2 = ("python -m train fit --data cache/ --svd models/checkpoints/svd_xt.safetensors --adapter runs/stage1/adapter "
          "--out runs/stage2 --stage 2")
SAMPLE = ("python -m train sample --data cache_test/ --svd models/checkpoints/svd_xt.safetensors --adapter "
          "runs/stage2/adapter --out samples/")
PAIRED = ("python -m surgsora.eval --real samples/cropped/real --fake samples/cropped/fake --flows samples/cropped/flows "
          "--metrics psnr,ssim,flow --out results/paired.json")
COPESD_PAIRED = ("python -m surgsora.eval --real samples/copesd/cropped/real --fake samples/copesd/cropped/fake "
                 "--flows samples/copesd/cropped/flows --metrics psnr,ssim,flow --out results/surgsora_paired.json")
WEIGHTS = ("--inception pt_inception-2015-12-05-6726825d.pth --i3d i3d_pretrained_400.pt --videomae "
           "vit_g_hybrid_pt_1200e_ssv2_ft.pth --clip models/clip-vit-large-patch14")
COPESD_DIST = ("python -m surgsora.eval --real samples/copesd/real --fake samples/copesd/fake --metrics "
               f"fid,is,fvd,cd_fvd,frame_consistency --out results/surgsora_dist.json {WEIGHTS}")
EVAL_GENERIC = ("python -m surgsora.eval --real REAL_DIR --fake GEN_DIR --flows FLOW_DIR --out results/report.json "
                f"{WEIGHTS} --bootstrap 200")
COPESD = "--recipe surgsora-copesd --models models/"
SYNTH_ARGS = "--jobs jobs.csv --models ComfyUI/models --out dataset --frames 25 --size 1024x576 --variants 3"
SYNTH = f"python -m surgsora synth {SYNTH_ARGS}"
NOT_HERE_COMFYUI = ("needs a ComfyUI checkout with its own Python (and network for the clone); the integration suite "
                    "installs the pack the same way: setup_comfyui.sh pip-installs this repository editable into "
                    "ComfyUI's venv and the server test links the checkout into custom_nodes")

COMMANDS: dict[str, Run | Elsewhere] = {
    # ------------------------------------------------------------------------------------------------ README
    # the venv and `pip install -e ".[test]"` are .ci/run's first steps (checked below); the preview runs as written
    README_CMD1: Run(setup_by_ci=True,
                     outputs=(("preview.mp4", 14), ("preview_flow.mp4", 14), ("preview_mask.mp4", 14)),
                     expect={"frames": 14, "width": 512, "height": 288, "warp": "occlusion"}),
    README_CMD2: Elsewhere("the whole suite, this file included: .ci/run runs it (with --durations=15)", (".ci/run",),
                           parse=False),
    AVERAGE: Run(outputs=(("average.mp4", 14), ("average_flow.mp4", 14)), expect={"warp": "average"}),
    GEN_ADAPTER: Run(subs=models("full"), extra=FAST_GENERATE + ANALYTIC, outputs=(("results/video.mp4", 4),),
                     expect={"mode": "adapter"}),
    GEN_MOFA: Run(subs=models("mofa"), extra=FAST_GENERATE, outputs=(("mofa.mp4", 4),), expect={"mode": "adapter"}),
    GEN_TTM: Run(subs=models("svd"), extra=FAST_TTM, outputs=(("ttm.mp4", 4),), expect={"mode": "ttm"}),
    "git clone https://github.com/surgsora/comfyui-surgsora ComfyUI/custom_nodes/comfyui-surgsora":
        Elsewhere(NOT_HERE_COMFYUI, ("tests/integration/test_comfyui_server.py::test_object_info_lists_every_node",),
                  parse=False),
    "ComfyUI/.venv/bin/python -m pip install -e ComfyUI/custom_nodes/comfyui-surgsora":
        Elsewhere(NOT_HERE_COMFYUI, ("tests/integration/setup_comfyui.sh",), parse=False),
    # ------------------------------------------------------------------------------------------------ comfyui.md
    "ln -s /path/to/comfyui-surgsora ComfyUI/custom_nodes/comfyui-surgsora":
        Elsewhere(NOT_HERE_COMFYUI, ("tests/integration/test_comfyui_server.py::test_object_info_lists_every_node",),
                  parse=False),
    # ------------------------------------------------------------------------------------------------ modes.md
    "python -m surgsora preview --image FRAME.png --tracks TRACKS.json --frames 14 --out preview.mp4":
        Run(subs=FRAME, extra=("--size", "256x144", "--frames", "4"),
            outputs=(("preview.mp4", 4), ("preview_flow.mp4", 4), ("preview_mask.mp4", 4))),
    "python -m surgsora models --models ComfyUI/models":
        Run(subs=models("full"), says=("sams/sam_vit_b_01ec64.pth", "depthanything/depth_anything_v2_vits.pth",
                                       "surgsora/ckpt_iter_42000.pth.tar")),
    "python -m surgsora download sam_vit_b_01ec64.pth --models ComfyUI/models":
        Elsewhere("downloads 375 MB from the network; the download path (size and SHA-256 checked, nothing left on "
                  "failure) runs on a served fake file",
                  ("tests/test_downloads.py::test_a_verified_download_lands_in_its_folder",
                   "tests/test_downloads.py::test_a_bad_or_partial_download_leaves_nothing")),
    ("python -m surgsora generate --mode ttm --image FRAME.png --tracks TRACKS.json --models ComfyUI/models --frames 21 "
     "--steps 50 --t-weak 0.32 --t-strong 0.42 --motion-bucket 17 --out ttm.mp4"):
        Run(subs={**FRAME, **models("svd")}, extra=FAST_TTM, outputs=(("ttm.mp4", 4),), expect={"mode": "ttm"}),
    # ------------------------------------------------------------------------------------------------ training.md
    PREPROCESS: Run(extra=FAST_PREPROCESS, outputs=(("cache/index.json", None),)),
    STAGE1: Run(drop=TINY_SVD, extra=("--config", "tiny", "--max-steps", "1"), after=(PREPROCESS,),
                outputs=(("runs/stage1/adapter/config.json", None),
                         ("runs/stage1/adapter/diffusion_pytorch_model.safetensors", None))),
    STAGE2: Run(drop=TINY_SVD, extra=("--config", "tiny", "--max-steps", "1", "--flow-decoder", "analytic"),
                after=(STAGE1,),
                outputs=(("runs/stage2/adapter/config.json", None),
                         ("runs/stage2/adapter/diffusion_pytorch_model.safetensors", None))),
    ("accelerate launch -m train fit --data cache/ --svd models/checkpoints/svd_xt.safetensors --out runs/stage1 "
     "--stage 1 --mixed-precision bf16 --gradient-checkpointing"):
        Elsewhere("several processes on GPUs; a two-process run (killed mid-run, resumed exactly) is tested on the CPU",
                  ("tests/test_train_multiprocess.py::test_two_process_run_killed_mid_run_resumes_exactly",)),
    f"python -m train preprocess {COPESD} --out cache_train/ copesd/train.txt --device cuda":
        Elsewhere("a GPU, the recipe's SAM ViT-H and Depth Anything V2 ViT-B files and the CoPESD data",
                  ("tests/test_train_cli.py::test_recipe_sets_the_paper_settings_and_flags_win",
                   "tests/test_train_cli.py::test_clip_lists_of_frame_folders_in_numeric_frame_order")),
    f"python -m train preprocess {COPESD} --out cache_test/ copesd/test.txt --device cuda":
        Elsewhere("a GPU, the recipe's SAM ViT-H and Depth Anything V2 ViT-B files and the CoPESD data",
                  ("tests/test_train_cli.py::test_recipe_sets_the_paper_settings_and_flags_win",)),
    (f"accelerate launch --num_processes 2 -m train fit {COPESD} --data cache_train/ --out runs/copesd_stage1 "
     "--stage 1"):
        Elsewhere("two GPUs, fp16 and the real SVD-xt 1.1",
                  ("tests/test_train_multiprocess.py::test_two_process_run_killed_mid_run_resumes_exactly",
                   "tests/test_train_cli.py::test_recipe_sets_the_paper_settings_and_flags_win")),
    (f"accelerate launch --num_processes 2 -m train fit {COPESD} --data cache_train/ --out runs/copesd_stage2 "
     "--stage 2 --adapter runs/copesd_stage1/adapter"):
        Elsewhere("two GPUs, fp16 and the real SVD-xt 1.1",
                  ("tests/test_train_multiprocess.py::test_two_process_run_killed_mid_run_resumes_exactly",
                   "tests/test_train_cli.py::test_stage2_continues_with_the_fps_its_adapter_was_trained_with")),
    # ------------------------------------------------------------------------------------------------ evaluation.md
    SAMPLE: Run(subs={"cache_test/": "cache/"}, drop=TINY_SVD,
                extra=("--config", "tiny", "--steps", "2", "--flow-decoder", "analytic"),
                after=(STAGE2,), outputs=(("samples/real", None), ("samples/fake", None), ("samples/flows", None),
                                          ("samples/cropped/fake", None))),
    PAIRED: Run(after=(SAMPLE,), outputs=(("results/paired.json", None), ("results/paired.md", None))),
    (f"python -m train sample {COPESD} --data cache_test/ --adapter runs/copesd_stage2/adapter --out samples/copesd "
     "--device cuda --steps 25"):
        Elsewhere("a GPU, the recipe's real SVD-xt 1.1 and a trained adapter",
                  ("tests/test_train_stage2.py::test_sample_writes_the_eval_layout_with_and_without_padding",)),
    COPESD_PAIRED: Run(subs={"samples/copesd/cropped/real": "samples/cropped/real",
                             "samples/copesd/cropped/fake": "samples/cropped/fake",
                             "samples/copesd/cropped/flows": "samples/cropped/flows"}, after=(SAMPLE,),
                       outputs=(("results/surgsora_paired.json", None),)),
    # Without the networks' weights each metric is skipped, naming its file (checked below); with tiny networks in
    # the real layouts, tests/test_eval_cli.py::test_cli_writes_a_complete_report computes every one of them.
    COPESD_DIST: Run(subs={"samples/copesd/real": "samples/real", "samples/copesd/fake": "samples/fake"},
                     after=(SAMPLE,), outputs=(("results/surgsora_dist.json", None),)),
    "python -m surgsora.eval table results/surgsora_paired.json results/surgsora_dist.json":
        Run(after=(COPESD_PAIRED, COPESD_DIST), says=("| Method |",)),
    EVAL_GENERIC: Run(subs={"REAL_DIR": "samples/real", "GEN_DIR": "samples/fake", "FLOW_DIR": "samples/flows"},
                      after=(SAMPLE,), outputs=(("results/report.json", None), ("results/report.md", None))),
    "python -m surgsora.eval table results/paired.json results/surgsora_paired.json":
        Run(after=(PAIRED, COPESD_PAIRED), says=("| Method |",)),
    # ------------------------------------------------------------------------------------------------ development.md
    "python -m pytest -q tests --durations=15": Elsewhere("the whole suite, this file included", (".ci/run",),
                                                          parse=False),
    "bash tests/integration/setup_comfyui.sh /path/to/ComfyUI":
        Elsewhere("needs a ComfyUI checkout and pip downloads (checked here: it refuses a folder that is not ComfyUI)",
                  ("tests/integration/setup_comfyui.sh",), parse=False),
    ("COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/ComfyUI/.venv/bin/python python -m pytest -q "
     "tests/integration"):
        Elsewhere("needs a real ComfyUI checkout (skipped without COMFYUI_PATH)",
                  ("tests/integration/test_comfyui_server.py::test_api_workflow_runs",
                   "tests/integration/test_core_svd.py::test_dual_clock_guider_is_time_to_move_through_core_sampling"),
                  parse=False),
    **{f"python benchmarks/{name}.py": Elsewhere("a benchmark: real-size models, minutes and GBs, never part of the "
                                                  "test run", (f"benchmarks/{name}.py",), parse=False)
       for name in ("adapter_overhead", "perception", "trajectory_endovis", "load_svd", "train_step",
                    "trajectory_memory", "synth_throughput")},
    "COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy/python benchmarks/comfy_step.py":
        Elsewhere("a benchmark in a real ComfyUI; its tiny run is an integration test",
                  ("tests/integration/test_comfy_step.py::test_tiny_run_times_both_paths_in_the_real_comfyui",),
                  parse=False),
    "python -m pytest -q -m integration tests/test_faults.py":
        Elsewhere("the slow fault tests (tiny SVD and training runs killed and refilled, minutes): run by hand, "
                  "skipped in the default suite", ("tests/test_faults.py",), parse=False),
    "python benchmarks/gpu_suite.py":
        Elsewhere("needs a CUDA GPU: real-size models, minutes; its CPU smoke run is a test",
                  ("tests/test_gpu_suite.py::test_gpu_suite_runs_on_the_cpu_with_tiny_models",), parse=False),
    "python benchmarks/gpu_suite.py --device cpu --tiny":
        Elsewhere("the CPU smoke run, in-process", ("tests/test_gpu_suite.py::test_gpu_suite_runs_on_the_cpu_with_tiny_models",),
                  parse=False),
    # ------------------------------------------------------------------------------------------------ synth.md
    SYNTH: Elsewhere("needs real weights (and a GPU to be useful); the same command on tiny models is run",
                     ("tests/test_synth.py::test_dataset_layout_index_card_and_failures",
                      "tests/test_synth.py::test_missing_models_are_listed_before_anything_loads")),
    f"accelerate launch --num_processes 8 -m surgsora synth {SYNTH_ARGS}":
        Elsewhere("several GPUs; two CPU processes give the same bytes as one",
                  ("tests/test_synth_multiprocess.py::test_two_processes_equal_one_and_kill_then_rerun_equals_uninterrupted",)),
    ("accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 "
     f"--num_processes 16 -m surgsora synth {SYNTH_ARGS}"):
        Elsewhere("several machines; two CPU processes give the same bytes as one",
                  ("tests/test_synth_multiprocess.py::test_two_processes_equal_one_and_kill_then_rerun_equals_uninterrupted",)),
    "python -m surgsora synth --jobs jobs.csv --tiny-models --out smoke --steps 2 --frames 4 --size 64x64":
        Elsewhere("run exactly as written on the example job file of the page",
                  ("tests/test_synth.py::test_docs_smoke_command_runs_as_written",)),
    "python workflows_src/make_workflows.py":
        Elsewhere("writes into the repository's workflows/ and workflows_api/; the test checks the files on disk are "
                  "what it writes", ("tests/test_workflows.py::test_files_are_what_the_generator_writes",),
                  parse=False),
    "python workflows_src/make_workflows.py --check":
        Elsewhere("run in-process by the workflow tests, which render the thumbnails once for the module: --check "
                  "on the shipped files and on a stale thumbnail",
                  ("tests/test_workflows.py::test_check_mode_passes_and_catches_a_stale_thumbnail",), parse=False),
}


# --------------------------------------------------------------------------------------------- extraction

def _blocks(page: str):
    """(language, first line number, lines) of each fenced block."""
    lang, start, lines = None, 0, []
    for number, line in enumerate((REPO / page).read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if lang is None:
                lang, start, lines = line.strip()[3:].strip(), number + 1, []
            else:
                yield lang, start, lines
                lang = None
        elif lang is not None:
            lines.append(line)


def _commands_of(lines: list[str], start: int):
    """(line number, normalised command) per command: `\\` continuations joined, comments dropped, whitespace and
    quoting normalised by shlex (so `".[test]"` reads `.[test]`)."""
    pending, first = "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        tokens = shlex.split(pending, comments=True)
        pending = ""
        if tokens:
            yield first, " ".join(tokens)


def docs_commands() -> list[tuple[str, int, str]]:
    """(page, line, command) of every command in a bash block of the README and docs/, in reading order."""
    out = []
    for page in PAGES:
        for lang, start, lines in _blocks(page):
            if lang == "bash":
                out.extend((page, number, command) for number, command in _commands_of(lines, start))
    return out


ALL = docs_commands()
RUNS = [c for c in dict.fromkeys(cmd for _, _, cmd in ALL) if isinstance(COMMANDS.get(c), Run)]
ELSEWHERE = [c for c in dict.fromkeys(cmd for _, _, cmd in ALL) if isinstance(COMMANDS.get(c), Elsewhere)]


def _id(command: str) -> str:
    page, line = next((p, n) for p, n, c in ALL if c == command)
    return f"{page}:{line}"


# --------------------------------------------------------------------------------------------- entry points

def _entry(tokens: list[str]):
    """The in-process entry point of a `python -m ...` command and its arguments."""
    if tokens[:2] != ["python", "-m"] or len(tokens) < 3:
        raise AssertionError(f"not a `python -m` command: {' '.join(tokens)}")
    module, argv = tokens[2], tokens[3:]
    if module == "surgsora":
        from surgsora.cli import main
    elif module == "surgsora.eval":
        from surgsora.eval.cli import main
    elif module == "train":
        from train.__main__ import main
    else:
        raise AssertionError(f"no in-process entry point for python -m {module}")
    return main, argv


def _call(main, argv) -> int:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code)
    return 0 if code is None else code


class _Parsed(Exception):
    def __init__(self, result):
        super().__init__("parsed")
        self.result = result


@contextlib.contextmanager
def _stop_at_parse(grab_parser: bool = False):
    """Make argparse stop the program right after parsing (or, with grab_parser, before) by raising _Parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(self if grab_parser else original(self, args, namespace))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        yield


def parse_with_real_parser(tokens: list[str]) -> argparse.Namespace:
    """Parse `python -m ...` or `accelerate launch ... -m train ...` arguments with the parsers the programs build,
    stopping before they do anything."""
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(tokens[2:])
        assert launch.module and launch.training_script in ("train", "surgsora"), \
            "accelerate must launch `-m train` or `-m surgsora`"
        tokens = ["python", "-m", launch.training_script, *launch.training_script_args]
    main, argv = _entry(tokens)
    err = io.StringIO()
    with _stop_at_parse(), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.result
        except SystemExit:
            raise AssertionError(f"the parser refused `{' '.join(tokens)}`: {err.getvalue().strip()}") from None
    raise AssertionError(f"`{' '.join(tokens)}` returned before parsing its arguments")


def _parser_of(tokens: list[str]) -> argparse.ArgumentParser:
    main, argv = _entry(tokens)
    with _stop_at_parse(grab_parser=True):
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.result
    raise AssertionError(f"no parser reached for {tokens}")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        out |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _options(sub)
    return out


# --------------------------------------------------------------------------------------------- the work folder

@dataclass
class Work:
    root: Path
    done: dict = field(default_factory=dict)  # command -> stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """demo/ (the repository's real data), videos/ (the demo clip), models/ = tiny/full (every tiny model in the
    real formats and file names: SAM, Depth Anything, CMP, SVD, a SurgSora adapter, MOFA's ControlNet with its
    SVD-xt-layout SVD), tiny/mofa (only MOFA's ControlNet and its SVD), tiny/svd (only SVD)."""
    from integration.env import tiny_env
    from integration.tiny_models import MOFA_NAME, MOFA_SVD_FOLDER, SVD_FOLDER

    full = Path(tiny_env().models_dir)  # shared with the other tests of this process
    root = tmp_path_factory.mktemp("docs")
    (root / "demo").symlink_to(REPO / "demo")
    (root / "videos").mkdir()
    (root / "videos" / "clip.mp4").symlink_to(REPO / "demo" / "endovis17" / "clip.mp4")
    (root / "tiny").mkdir()
    (root / "tiny" / "full").symlink_to(full)
    (root / "models").symlink_to(full)
    for kind, links in {"mofa": {f"diffusers/{MOFA_SVD_FOLDER}": f"diffusers/{MOFA_SVD_FOLDER}",
                                 f"surgsora/{MOFA_NAME}": "surgsora/controlnet"},
                        "svd": {f"diffusers/{SVD_FOLDER}": f"diffusers/{SVD_FOLDER}"}}.items():
        for source, target in links.items():
            (root / "tiny" / kind / target).parent.mkdir(parents=True, exist_ok=True)
            (root / "tiny" / kind / target).symlink_to(full / source)
    return Work(root)


def _argv(command: str, spec: Run) -> list[str]:
    if spec.setup_by_ci:
        command = command.split(" && ")[-1]
    tokens = [spec.subs.get(t, t) for t in shlex.split(command)]
    for flag in spec.drop:
        while flag in tokens:
            i = tokens.index(flag)
            del tokens[i:i + 2]
    return tokens + list(spec.extra)


def _run(work: Work, command: str, monkeypatch) -> str:
    if command in work.done:
        return work.done[command]
    spec = COMMANDS[command]
    for before in spec.after:
        _run(work, before, monkeypatch)
    monkeypatch.chdir(work.root)
    main, argv = _entry(_argv(command, spec))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _call(main, argv)
    assert code == 0, f"`{command}` (run as {argv}) exited {code}:\n{err.getvalue()[-3000:]}\n{out.getvalue()[-2000:]}"
    work.done[command] = out.getvalue()
    return work.done[command]


# --------------------------------------------------------------------------------------------- the tests

def test_every_docs_command_is_exercised():
    missing = [f"{page}:{line}: `{cmd}` is neither run nor covered by any test: add it to COMMANDS in "
               "tests/test_docs.py, as a Run (placeholders -> fixtures, exit 0, the files it promises) or, if it "
               "cannot run here, as Elsewhere (why, and the test or .ci/run that runs it)"
               for page, line, cmd in ALL if cmd not in COMMANDS]
    assert not missing, "\n".join(missing)
    stale = sorted(set(COMMANDS) - {cmd for _, _, cmd in ALL})
    assert not stale, f"COMMANDS entries no longer in the docs (remove or update them): {stale}"
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} == set(PAGES) - {"README.md"}, \
        "a new page under docs/ must be added to PAGES in tests/test_docs.py"


def test_readme_starts_with_its_two_commands_and_ci_runs_the_second():
    bash = [(start, lines) for lang, start, lines in _blocks("README.md") if lang == "bash"]
    first, second = ([c for _, c in _commands_of(lines, start)] for start, lines in bash[:2])
    assert first == [README_CMD1] and second == [README_CMD2]
    assert "--index-url" not in (REPO / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0], \
        "command 1 must need only PyPI"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    tests_line = next(line for line in ci if line.startswith("python -m pytest"))
    assert tests_line.replace(" --durations=15", "") == README_CMD2.split(" && ")[1]
    assert "python3 -m venv .venv-ci" in ci and ". .venv-ci/bin/activate" in ci
    assert 'pip install -q -e ".[test]"' in ci  # command 1's install, in CI's own venv


@pytest.mark.parametrize("command", RUNS, ids=[_id(c) for c in RUNS])
def test_command_runs(command, work, monkeypatch):
    from surgsora.video_io import video_info

    stdout = _run(work, command, monkeypatch)
    spec = COMMANDS[command]
    for path, frames in spec.outputs:
        target = work.root / path
        assert target.exists() and (target.is_dir() or target.stat().st_size > 0), f"{command} did not write {path}"
        if frames is not None:
            assert video_info(target)["frames"] == frames, path
    if spec.expect:
        result = json.loads(stdout.strip().splitlines()[-1])
        assert {k: result[k] for k in spec.expect} == spec.expect
    if command == COPESD_DIST:  # without the networks' weights every metric is skipped, naming the file
        metrics = json.loads((work.root / "results" / "surgsora_dist.json").read_text())["metrics"]
        assert all(m["status"] == "skipped" for m in metrics.values()), metrics
        assert "pt_inception-2015-12-05-6726825d.pth" in metrics["fid"]["reason"]
    if command == GEN_MOFA:  # MOFA's ControlNet is the only adapter there, and generate takes it
        assert json.loads(stdout.strip().splitlines()[-1])["models"]["adapter"].endswith("controlnet")
    for words in spec.says:
        assert words in stdout, f"{command} did not say {words!r}"


@pytest.mark.parametrize("command", ELSEWHERE, ids=[_id(c) for c in ELSEWHERE])
def test_command_is_covered_elsewhere(command):
    spec = COMMANDS[command]
    assert spec.why and spec.by
    for by in spec.by:
        path, _, function = by.partition("::")
        assert (REPO / path).is_file(), f"{command}: {path} does not exist"
        if function:
            tree = ast.parse((REPO / path).read_text())
            assert function in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, \
                f"{command}: {path} has no {function}"
    tokens = shlex.split(command)
    if spec.parse:
        parse_with_real_parser(tokens)
    if command.startswith(("git clone", "ComfyUI/.venv/bin/python -m pip install")):
        import tomllib

        url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
        assert command.split()[-1].endswith("/comfyui-surgsora") and (url in command or "git clone" not in command)
    if "COMFYUI_PATH" in command and "tests/integration" in command:
        source = "".join(p.read_text() for p in (REPO / "tests" / "integration").glob("*.py"))
        assert all(f'"{var}"' in source for var in re.findall(r"(\w+)=", command)), "unknown environment variable"
    if command.startswith("bash tests/integration/setup_comfyui.sh"):
        import subprocess

        proc = subprocess.run(tokens, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "usage:" in proc.stderr  # /path/to/ComfyUI is not a ComfyUI checkout
    if command.startswith("python benchmarks/") or "benchmarks/" in command:
        ast.parse((REPO / next(t for t in tokens if t.startswith("benchmarks/"))).read_text())


def test_every_flag_in_the_docs_exists():
    """Each `--flag` the README and docs mention is an option of one of our commands (or of the named tool)."""
    from surgsora.cli import build_parser
    from surgsora.eval.cli import build_parser as eval_parser

    known = _options(build_parser()) | _options(eval_parser())
    for tokens in (["python", "-m", "surgsora.eval", "table"], ["python", "-m", "train", "preprocess"],
                   ["python", "-m", "train", "fit"], ["python", "-m", "train", "sample"]):
        known |= _options(_parser_of(tokens))
    others = {"--index-url": "pip", "--durations": "pytest", "--num_processes": "accelerate", "--nproc_per_node": "torchrun",
              **{f: "accelerate" for f in ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port")}, "--cpu": "ComfyUI",
              "--extra-model-paths-config": "ComfyUI", "--check": "workflows_src/make_workflows.py",
              "--tiny": "benchmarks/gpu_suite.py"}
    unknown = {}
    for page in PAGES:
        for flag in re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", (REPO / page).read_text()):
            if flag not in known and flag not in others:
                unknown.setdefault(flag, page)
    assert not unknown, f"flags no command knows (renamed or removed?): {unknown}"


def test_readme_lists_every_node_and_template():
    import nodes

    text = (REPO / "README.md").read_text()
    rows = {m[0].strip(): m[1].strip() for m in re.findall(r"^\| (SurgSora [^|]+)\| (SurgSora/\w+) \|", text, re.M)}
    expected = {name: nodes.NODE_CLASS_MAPPINGS[key].CATEGORY for key, name in nodes.NODE_DISPLAY_NAME_MAPPINGS.items()}
    assert rows == expected
    titles = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    section = text.split("## ComfyUI", 1)[1].split("\n## ", 1)[0]
    assert f"The {len(titles)} templates" in section and all(f"**{t}**" in section for t in titles)
    assert len(text.splitlines()) <= 160, "the README is a guide: details go to docs/"
