"""User-description feedback for loser instances (DSPO pipeline step 7).

Typical use::

    flag, reason = suspect(reward.fr, reward.nr, SuspectConfig())     # or a human flag
    feedback = describe_feedback(loser_crop, hr_crop, mask, hallucination=flag, reason=reason,
                                 human_negative=human_text, captioner=None)
    feedback.negative_text, feedback.positive_text, feedback.source   # "template" offline
    TemplateWriter().describe()                                        # manifest record

- ``suspect``: low normalised fidelity to HR and high normalised realism -> suspect;
- ``measure``: sharpness / colour / invented-texture / ringing / contrast attributes of
  the region (numpy, inside the mask) -> ``Attributes``;
- ``TemplateWriter``: deterministic, bounded attributes -> (negative, positive) text;
- ``HFCaptioner``: any transformers image-to-text model from a local folder or the HF
  cache (never downloaded); ``build_tiny_captioner`` makes a tiny random BLIP / GIT;
- ``VLMCaptioner``: a chat VLM (Qwen2.5-VL) asked what is wrong in the region, its answer
  parsed (``parse_answer``); ``build_tiny_qwen_vl`` makes a tiny random Qwen2.5-VL;
- ``describe_feedback``: human text > captioner > template -> ``Feedback``.

Importing this package imports neither torch nor transformers (the captioner does, when
built).
"""

from .attributes import Attributes, measure
from .captioner import (
    Captioner,
    HFCaptioner,
    MissingCaptionerError,
    resolve_model_dir,
    to_pil,
)
from .config import (
    CaptionerConfig,
    FeedbackConfig,
    MeasureConfig,
    SuspectConfig,
    TemplateConfig,
)
from .describe import (
    Feedback,
    FeedbackInput,
    describe_feedback,
    describe_feedback_batch,
)
from .suspects import suspect
from .template import (
    COLOUR_DIRECTIONS,
    VOCABULARY,
    VOCABULARY_VERSION,
    RegionContext,
    TemplateWriter,
)
from .tiny import (
    bert_vocab_path,
    build_tiny_captioner,
    build_tokenizer,
    generated_vocab,
)
from .tiny_vlm import build_qwen_tokenizer, build_tiny_qwen_vl
from .vlm import NEGATIVE_PROMPT, POSITIVE_PROMPT, VLMCaptioner, parse_answer

__all__ = [
    "COLOUR_DIRECTIONS",
    "NEGATIVE_PROMPT",
    "POSITIVE_PROMPT",
    "VOCABULARY",
    "VOCABULARY_VERSION",
    "Attributes",
    "Captioner",
    "CaptionerConfig",
    "Feedback",
    "FeedbackConfig",
    "FeedbackInput",
    "HFCaptioner",
    "MeasureConfig",
    "MissingCaptionerError",
    "RegionContext",
    "SuspectConfig",
    "TemplateConfig",
    "TemplateWriter",
    "VLMCaptioner",
    "bert_vocab_path",
    "build_qwen_tokenizer",
    "build_tiny_captioner",
    "build_tiny_qwen_vl",
    "build_tokenizer",
    "describe_feedback",
    "describe_feedback_batch",
    "generated_vocab",
    "measure",
    "parse_answer",
    "resolve_model_dir",
    "suspect",
    "to_pil",
]
