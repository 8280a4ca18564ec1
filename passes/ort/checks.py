"""Output checks: does a rewritten ONNX model (quantized, optimized, fused) still compute what its input did?

`compare_outputs` runs both models on `sample_sentences` with onnxruntime's CPU provider and returns the
largest absolute difference and, for classifiers, how often the predicted label stayed the same. An
output holding NaN or inf fails the check with a PassError: a graph that computes NaN must never pass as
"difference 0" (NaN compares false with everything, so a plain max() would skip it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from passes.base import PassError
from passes.hf.loading import load_light_tokenizer
from passes.ort.sessions import decoder_feed, encode, make_cpu_session, session_inputs

#: Plain English the check tokenizes into samples of different lengths (any model's tokenizer knows it).
SAMPLE_TEXT = (
    "The meeting moved to Thursday afternoon, so please bring the quarterly numbers and the draft plan. "
    "Congratulations, you have been selected to receive a free cruise; reply now to claim your prize. "
    "I think the new version of the app is faster, but the settings page still crashes on my phone. "
    "Could you pick up some bread and milk on the way home? We are out of both since yesterday morning. "
    "The committee reviewed forty proposals and funded nine of them, mostly small projects in rural schools."
)


def sample_sentences(n: int, max_words: int = 80) -> list[str]:
    """`n` sentences of different lengths (3 words up to `max_words`), cut from SAMPLE_TEXT at varying offsets."""
    words = SAMPLE_TEXT.split()
    longest = min(max_words, len(words))
    out = []
    for i in range(n):
        length = 3 + (i * 11) % max(1, longest - 2) if n > 1 else 12
        start = (i * 7) % len(words)
        out.append(" ".join((words[start:] + words[:start])[:length]))
    return out


def compare_outputs(folder: Path, src: Path, dst: Path, outputs: list[str] | None,
                    what: str = "the quantized model") -> dict[str, Any]:
    """Run the input model `src` and `what` (`dst`) on sample sentences: max |diff| and label agreement.

    `folder` holds the tokenizer. Raises a PassError when `dst` cannot be loaded or run, or when either
    model's output holds NaN or inf (naming the model, the output and the sample).
    """
    import numpy as np

    try:
        # The check runs on the CPU provider: every machine has it, and a QDQ model for an NPU runs there too.
        before, after = make_cpu_session(src), make_cpu_session(dst)
    except Exception as exc:  # an invalid graph: the user should know which step produced it
        raise PassError(f"onnxruntime cannot load {what}: {exc}") from exc
    tokenizer = load_light_tokenizer(folder)  # not transformers: see LightTokenizer
    output = (outputs or [before.get_outputs()[0].name])[0]
    worst, same, total = 0.0, 0, 0
    # Samples one at a time, unpadded: as a deployed classifier sees them.
    for text in sample_sentences(8):
        # A decoder (an LLM export) takes a KV cache: one prefill from an empty cache.
        feed = decoder_feed(before, tokenizer(text)["input_ids"])
        decoder = feed is not None
        if feed is None:
            feed = encode(tokenizer, session_inputs(before), [text])
        (ref,) = before.run([output], feed)
        try:
            (got,) = after.run([output], feed)
        except Exception as exc:
            raise PassError(f"{what} fails to run: {exc}") from exc
        for name, value in (("the input model", ref), (what, got)):
            if not np.isfinite(value).all():
                bad = "NaN" if np.isnan(value).any() else "inf"
                raise PassError(
                    f"{name}'s output {output!r} holds {bad} on the sample {text[:40]!r}...: the graph is broken "
                    f"({'check the step that wrote the input' if name == 'the input model' else 'try another method or settings, or exclude the nodes that overflow'})"
                )
        worst = max(worst, float(np.max(np.abs(got.astype(np.float32) - ref.astype(np.float32)))))
        if output == "logits" and not decoder:
            same += int((got.argmax(-1) == ref.argmax(-1)).all())
            total += 1
    return {"max_abs_diff": worst, "same_label": f"{same}/{total}" if total else None,
            "execution": {"provider": after.get_providers()[0], "providers": after.get_providers(), "purpose": "check"}}
