"""`olive`: run one pass of olive-ai (0.13) on an artifact of this workflow.

How: Olive's own pass API, without its engine. The pass class comes from Olive's registry
(`OlivePackageConfig.import_pass_module`), is built with `create_pass_from_dict(..., disable_search=True)`
for an `AcceleratorSpec` made from the step's target (device, first provider), and `Pass.run(model,
output_path)` is called on a model handler that points at our artifact's folder. That is exactly what
Olive's engine does for one pass on the local system (`LocalSystem.run_pass`), minus what we replace:
its cache (ours holds the result; the working folder is a temporary directory thrown away afterwards),
its search, its evaluator, and its habit of logging a failed pass and returning normally, so a failure
here always raises with Olive's message.

Olive is chatty: its logger, transformers' warnings and the progress bars its passes print are captured
while the pass runs; Olive's warnings are passed on to the step's log afterwards, and the last lines of
the capture are quoted in the error when the pass fails. Nothing is written to `ctx.out_dir` until Olive
has returned a model; if copying or checking it fails, the folder is emptied again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.steps.olive import OliveConfig
from schemas.suggest import did_you_mean

from passes.base import Artifact, Pass, PassError, StepContext
from passes.ort import files
from passes.registry import register_pass

#: How many captured log lines an error message quotes.
LOG_TAIL = 15
#: A progress bar's line (tqdm: "12/40 [00:01<00:02, 3.1it/s]", "0mod [00:00, ?mod/s]"): not quoted in errors.
_PROGRESS = re.compile(r"\[\d\d:\d\d|\?\w*/s\]|\d%\|")
#: The chat script (passes/templates) written as inference.py into a genai folder, as export_onnx does.
GENAI_CHAT_SCRIPT = "chat_genai.py"
#: The working sub-folder Olive writes its output model into.
OUTPUT_NAME = "output_model"


@register_pass
class Olive(Pass[OliveConfig]):
    """Run `config.pass_name` with `config.config` on the `model` artifact; the output is an hf_model or onnx_model.

    meta: task, labels (from the input), format (hf | onnx | genai), model_type, quantization (hf outputs:
    `olive` for Olive's packed weight-only checkpoints), olive ({pass, config after defaults, version,
    data}), quant_ops (ONNX outputs), size_mb, summary, metrics {size_mb}.
    """

    config_class = OliveConfig
    #: 2: a causal LM's calibration rows are unpadded and rendered as the model is served (`passes.olive.data`);
    #: 3: a genai folder's inference.py caps the thread count at the machine's CPUs, takes --threads
    version = 3
    packages = ("olive-ai", "onnxruntime", "onnx", "torch", "transformers")

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        cfg = self.config
        os.environ["OLIVE_DISABLE_TELEMETRY"] = "1"  # before Olive is imported: nothing may phone home
        source: Artifact = inputs["model"]
        dataset: Artifact | None = inputs.get("data")
        pass_cls = _pass_class(cfg.pass_name)
        with tempfile.TemporaryDirectory(prefix=f"olive-{ctx.step}-") as tmp:
            work = Path(tmp)
            isa = _built_for(cfg, ctx)
            options, data_note = _pass_options(cfg, pass_cls, source, dataset, work, ctx, isa)
            capture = _Capture(ctx.log)
            with capture:
                olive_pass = _build(pass_cls, options, ctx)
                handler = _run(olive_pass, source, work, capture)
            for line in capture.warnings:
                ctx.log(f"olive: {line}")
            try:
                facts = _collect(handler, source, ctx)
            except BaseException:
                _empty(ctx.out_dir)
                raise
        return _meta(cfg, olive_pass, facts, data_note, ctx, isa)


def _pass_class(name: str) -> type:
    """Olive's pass class for `name` (Olive's registry is case-insensitive; we report its spelling)."""
    from olive.package_config import OlivePackageConfig

    package = OlivePackageConfig.load_default_config()
    # Olive keys its registry in lower case; the class name at the end of module_path is the real spelling.
    known = {k.lower(): v.module_path.rsplit(".", 1)[-1] for k, v in package.passes.items()}
    if name.lower() not in known:
        close = did_you_mean(name, known.values())
        hint = f" ({close})" if close else ""
        raise PassError(f"Olive has no pass {name!r}{hint}; `pipeline passes olive` lists them")
    try:
        return package.import_pass_module(known[name.lower()])
    except ImportError as exc:
        raise PassError(f"Olive's {known[name.lower()]} needs a package that is not installed: {exc}") from exc


def _takes_data(pass_cls: type) -> bool:
    from olive.hardware.accelerator import DEFAULT_CPU_ACCELERATOR

    return "data_config" in pass_cls.default_config(DEFAULT_CPU_ACCELERATOR)


def _pass_options(cfg: OliveConfig, pass_cls: type, source: Artifact, dataset: Artifact | None, work: Path,
                  ctx: StepContext, isa: str | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The pass's config dict: the step's `config` (with `isa`'s `config_by_isa`), plus a data config over our
    dataset when `data` is set."""
    from passes.olive import data as data_mod
    from passes.olive.kinds import our_task

    options = cfg.config_for(isa)
    if dataset is None:
        return options, None
    if not _takes_data(pass_cls):
        raise PassError(f"Olive's {cfg.pass_name} takes no data: remove `data` from the step")
    if "data_config" in options:
        raise PassError("set the calibration data with `data` (a load_data step), not `config.data_config`")
    options["data_config"], rows = data_mod.data_config(
        dataset, cfg.split, cfg.samples, Path(source.path), our_task(source) == "causal-lm", work)
    ctx.log(f"data: {rows} rows of {dataset.step!r} ({cfg.split})")
    return options, {"step": dataset.step, "split": cfg.split, "rows": rows}


def _built_for(cfg: OliveConfig, ctx: StepContext) -> str | None:
    """The instruction set whose `config_by_isa` entry applies: the cpu target's (`auto`: this machine's)."""
    from passes.ort.isa import resolve

    if not cfg.config_by_isa or ctx.target.device != "cpu":
        return None
    isa = resolve(ctx.target.isa)
    if isa in cfg.config_by_isa:
        ctx.log(f"config for {isa}: {cfg.config_by_isa[isa]} (config_by_isa)")  # type: ignore[index]
    return isa


def _build(pass_cls: type, options: dict[str, Any], ctx: StepContext) -> Any:
    """The Olive pass object for the step's target; a bad config value is a PassError with Olive's reason."""
    from olive.hardware.accelerator import AcceleratorSpec
    from olive.passes.olive_pass import create_pass_from_dict

    spec = AcceleratorSpec(accelerator_type=ctx.target.device, execution_provider=ctx.target.planned_provider())
    known = pass_cls.default_config(spec)
    for key in options:  # Olive drops unknown keys with a warning: a typo would silently run the defaults
        if key not in known:
            close = did_you_mean(key, known)
            hint = f" ({close})" if close else ""
            raise PassError(f"Olive's {pass_cls.__name__} has no parameter {key!r}{hint}; it takes "
                            f"{', '.join(sorted(known))}")
    try:
        return create_pass_from_dict(pass_cls, options, disable_search=True, accelerator_spec=spec)
    except Exception as exc:  # pydantic ValidationError, or the pass's own validators' ValueError
        raise PassError(f"Olive refused the config of {pass_cls.__name__}: {_config_errors(exc)}") from exc


#: Members of Olive's config unions that every parameter accepts besides its own type (search spaces and
#: markers): their "should be" lines say nothing about the user's value.
_OLIVE_UNION_NOISE = ("SearchParameter", "PassParamDefault", "SpecialParamValue")


def _config_errors(exc: Exception) -> str:
    """Olive's validation error as one line per parameter, without the search-space union members."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return f"{type(exc).__name__}: {exc}"
    lines: dict[str, list[str]] = {}
    for err in exc.errors():
        where = [str(part) for part in err["loc"] if not any(n in str(part) for n in _OLIVE_UNION_NOISE)]
        if len(where) < len(err["loc"]):
            continue
        field = str(err["loc"][0]) if err["loc"] else "config"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.setdefault(field, []).append(err["msg"] + got)
    if not lines:
        return str(exc)
    return "; ".join(f"{field}: {' / '.join(dict.fromkeys(msgs))}" for field, msgs in lines.items())


def _run(olive_pass: Any, source: Artifact, work: Path, capture: "_Capture") -> Any:
    """Run the pass on our artifact; any exception, or no model returned, is a PassError quoting Olive's log."""
    from olive.model import ModelConfig

    from passes.olive.kinds import input_model_config

    name = type(olive_pass).__name__
    try:
        model = ModelConfig.model_validate(input_model_config(source)).create_model()
        handler = olive_pass.run(model, str(work / OUTPUT_NAME))
    except PassError:
        raise
    except Exception as exc:  # Olive's passes raise anything (AssertionError, RuntimeError, ValueError, ...)
        raise PassError(f"Olive's {name} failed: {type(exc).__name__}: {exc}{capture.tail()}") from exc
    if handler is None or handler.get_resource("model_path") is None:
        raise PassError(f"Olive's {name} returned no model{capture.tail()}")
    return handler


def _collect(handler: Any, source: Artifact, ctx: StepContext) -> dict[str, Any]:
    """Olive's result copied into ctx.out_dir (our layout) and checked; facts for the meta."""
    from passes.olive.kinds import collect_output

    facts = collect_output(handler, source, ctx.out_dir)
    if facts["kind"] == "onnx_model":
        facts["quant_ops"] = {op: n for op, n in files.op_counts(ctx.out_dir / files.MODEL_FILE).items()
                              if op in files.QUANT_OP_TYPES}
        facts["size_mb"] = files.mb(files.model_size_bytes(ctx.out_dir))
        if facts["genai"]:
            if not (ctx.out_dir / files.INFERENCE_SCRIPT).exists():  # the chat loop export_onnx's genai folders carry
                from importlib.resources import files as resources

                script = resources("passes").joinpath("templates", GENAI_CHAT_SCRIPT).read_text(encoding="utf-8")
                (ctx.out_dir / files.INFERENCE_SCRIPT).write_text(script, encoding="utf-8")
            # The target's threads, as export_onnx writes them: without a setting genai decodes on one thread
            # here (PERFORMANCE-NOTES: 108-114 -> 163 tokens/s with 2 on SmolLM2).
            from passes.ort.genai_build import set_threads
            from passes.ort.sessions import cpu_cores

            facts["threads"] = ctx.target.threads or cpu_cores()
            set_threads(ctx.out_dir, facts["threads"])
            _check_genai(ctx)
        else:
            if not (ctx.out_dir / files.INFERENCE_SCRIPT).exists() and facts["task"] != "causal-lm":
                files.write_inference_script(ctx.out_dir)
            _check_onnx(source, ctx)
    else:
        facts["size_mb"] = files.mb(sum(p.stat().st_size for p in ctx.out_dir.iterdir()
                                        if p.is_file() and p.name.endswith((".safetensors", ".bin"))))
    return facts


def _check_onnx(source: Artifact, ctx: StepContext) -> None:
    """The new model must load in onnxruntime (on the CPU provider every machine has)."""
    from passes.ort.sessions import make_cpu_session

    try:
        make_cpu_session(ctx.out_dir / files.MODEL_FILE)
    except Exception as exc:  # an invalid graph: say which step made it
        raise PassError(f"onnxruntime cannot load the model Olive wrote: {type(exc).__name__}: {exc}") from exc


def _check_genai(ctx: StepContext) -> None:
    """A genai folder must load in onnxruntime-genai and answer (CPU targets: a GPU build may not run here)."""
    if ctx.target.device != "cpu":
        ctx.log("genai folder for a non-CPU target: not run here")
        return
    from passes.ort import genai_run

    try:
        answer = genai_run.smoke_test(ctx.out_dir, "hello", max_new_tokens=8)
    except Exception as exc:  # onnxruntime-genai raises bare RuntimeErrors
        raise PassError(f"onnxruntime-genai cannot run the folder Olive wrote: {exc}") from exc
    ctx.log(f"check: onnxruntime-genai loads the folder and answers 'hello' with {answer!r}")


def _meta(cfg: OliveConfig, olive_pass: Any, facts: dict[str, Any], data_note: dict | None,
          ctx: StepContext, isa: str | None) -> dict[str, Any]:
    import olive

    name = type(olive_pass).__name__
    full = olive_pass.config.to_json()
    if data_note is not None:  # its paths point into the deleted working folder: say what it was instead
        full.pop("data_config", None)
    kind, fmt = facts.pop("kind"), facts.get("format")
    quant = facts.get("quantization")
    if quant == "olive":
        ctx.log("the weights are in Olive's packed format (quant_method: olive): an olive ModelBuilder step reads "
                "them; transformers alone does not (it would re-initialize the packed layers)")
    ops = facts.get("quant_ops") or {}
    detail = ", ".join(f"{n} {op}" for op, n in sorted(ops.items())) or (f"{quant} quantized" if quant else "")
    return {
        **facts,
        "olive": {"pass": name, "config": full, "version": olive.__version__, "data": data_note},
        **({"choices": {"isa": isa, "config_by_isa": cfg.config_by_isa}} if cfg.config_by_isa else {}),
        "summary": f"Olive {name} -> {kind} ({fmt}), {facts['size_mb']:.1f} MB" + (f"; {detail}" if detail else ""),
        "metrics": {"size_mb": facts["size_mb"]},
    }


def _empty(folder: Path) -> None:
    """Remove everything under `folder` (nothing half-built is left for the runner)."""
    for item in folder.iterdir():
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


#: A tqdm bar as Olive's passes print it: "Processing layers...:  40%|####      | 12/30 [...".
_TQDM = re.compile(r"([^\r\n|]*?):?\s*(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")


class _ProgressStream(io.StringIO):
    """Olive's printed output, kept for error messages; its progress bars (tqdm: GPTQ's "Processing
    layers...", calibration loops) are passed to `report` as a line per tenth of the way, so a pass
    that runs for many minutes shows that it moves."""

    def __init__(self, report: Callable[[str], None] | None):
        super().__init__()
        self._report = report
        self._shown: dict[str, int] = {}

    def write(self, text: str) -> int:
        if self._report is not None:
            for desc, _, done, total in _TQDM.findall(text):
                desc, done, total = desc.strip() or "progress", int(done), int(total)
                tenth = done * 10 // total if total else 0
                if tenth > self._shown.get(desc, -1):
                    self._shown[desc] = tenth
                    self._report(f"olive: {desc} {done}/{total}")
        return super().write(text)


class _Capture(logging.Handler):
    """While active: Olive's log records, transformers' warnings and stdout/stderr go to a buffer.

    `warnings` keeps Olive's WARNING+ messages (passed on to the step log afterwards); `tail()` the last
    lines of everything, for error messages.
    """

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        super().__init__(level=logging.INFO)
        self.lines: deque[str] = deque(maxlen=200)
        self.warnings: list[str] = []
        self.stream = _ProgressStream(report)
        self._stack = contextlib.ExitStack()
        self._saved: tuple[list, int, bool] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(f"{record.levelname}: {message}")
        if record.levelno >= logging.WARNING:
            self.warnings.append(message)

    def tail(self) -> str:
        """The last captured lines, as text to append to an error message ('' when nothing was captured)."""
        printed = [ln.strip() for ln in self.stream.getvalue().replace("\r", "\n").splitlines()
                   if ln.strip() and not _PROGRESS.search(ln)]
        last = (list(self.lines) + printed[-LOG_TAIL:])[-LOG_TAIL:]
        return ("\nOlive's last log lines:\n  " + "\n  ".join(last)) if last else ""

    def __enter__(self) -> "_Capture":
        from passes.hf.loading import quiet_transformers

        logger = logging.getLogger("olive")
        self._saved = (list(logger.handlers), logger.level, logger.propagate)
        for h in logger.handlers[:]:
            logger.removeHandler(h)
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self._stack.enter_context(quiet_transformers())
        self._stack.enter_context(contextlib.redirect_stdout(self.stream))
        self._stack.enter_context(contextlib.redirect_stderr(self.stream))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        logger = logging.getLogger("olive")
        logger.removeHandler(self)
        handlers, level, propagate = self._saved or ([], logging.NOTSET, True)
        for h in handlers:
            logger.addHandler(h)
        logger.setLevel(level)
        logger.propagate = propagate
