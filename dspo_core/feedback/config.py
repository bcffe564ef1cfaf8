"""Options of the user-description feedback (DSPO pipeline step 7).

Every choice the paper leaves open is a value here, so it can be changed and ablated:

- ``SuspectConfig``: when a loser instance is a hallucination suspect (low fidelity to
  HR, high no-reference quality);
- ``MeasureConfig``: thresholds that turn the measured region attributes into flags
  (over-sharpened, over-smoothed, colour shift, invented texture, ringing, contrast);
- ``TemplateConfig``: the deterministic offline text writer (length bounds, fallbacks);
- ``CaptionerConfig``: a transformers image-to-text model (BLIP, GIT, Florence-2), or with
  ``kind: vlm`` a chat VLM (Qwen2.5-VL) asked what is wrong in the region, loaded from a
  local folder or the Hugging Face cache, never downloaded;
- ``FeedbackConfig``: how the pieces are combined into one ``Feedback`` record.

Pure pydantic: importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dspo_core.devices import AnyDevice


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuspectConfig(_Config):
    """A loser instance is a hallucination suspect when it is unfaithful yet looks good.

    Scores are the per-instance min-max normalised family means of ``dspo_core.iqa``
    (``RewardRecord.fr`` / ``.nr``: 1 = best candidate of the group, 0 = worst).
    """

    fr_max: float = Field(0.35, ge=0.0, le=1.0, description="suspect only if the normalised full-reference (fidelity to HR) score is <= this")
    nr_min: float = Field(0.6, ge=0.0, le=1.0, description="suspect only if the normalised no-reference (realism) score is >= this")


class MeasureConfig(_Config):
    """Thresholds that turn measured region attributes into flags.

    Intensities are in [0, 1] (8-bit values / 255); colour differences in CIELAB units
    (L* 0..100; a difference of ~2.3 is a just-noticeable difference).
    """

    sharpness_factor: float = Field(1.5, gt=1.0, description="over-sharpened when Laplacian-variance ratio candidate/HR > this, over-smoothed when < 1/this")
    lightness_min: float = Field(3.0, gt=0.0, description="'brighter'/'darker' when the mean L* difference exceeds this")
    warm_hue_deg: float = Field(60.0, ge=0.0, lt=360.0, description="CIELAB hue angle of the 'warm' direction of the a*b* plane (60 = orange; 180 + it = blue); the tint axis is 90 degrees from it (magenta-green)")
    warmth_min: float = Field(3.0, gt=0.0, description="'warmer'/'cooler' when the mean a*b* shift projected on the warm axis exceeds this")
    tint_min: float = Field(3.0, gt=0.0, description="'more magenta'/'greener' when the mean a*b* shift projected on the tint axis exceeds this")
    saturation_min: float = Field(5.0, gt=0.0, description="'more saturated'/'desaturated' when the mean chroma difference exceeds this")
    flat_max: float = Field(0.012, gt=0.0, description="an HR pixel is flat when the RMS of its 3x3 high-pass over a 5x5 window is below this")
    min_flat_fraction: float = Field(0.1, ge=0.0, le=1.0, description="invented texture is judged only when at least this share of the mask is flat in the HR")
    invented_texture_min: float = Field(0.02, gt=0.0, description="invented texture when candidate minus HR high-pass RMS on HR-flat pixels exceeds this (~5 grey levels)")
    measure_ringing: bool = Field(True, description="measure overshoot/ringing in a band next to HR edges")
    edge_min: float = Field(0.05, gt=0.0, description="an HR pixel is an edge when its gradient magnitude (central differences) exceeds this")
    ringing_band: int = Field(3, ge=1, le=16, description="width in pixels of the band next to HR edges where ringing is measured")
    ringing_factor: float = Field(2.0, gt=1.0, description="ringing when high-pass RMS candidate/HR in the edge band exceeds this")
    ringing_min: float = Field(0.01, gt=0.0, description="... and the candidate's band RMS exceeds the HR's by at least this")
    contrast_factor: float = Field(1.25, gt=1.0, description="higher/lower contrast when the L* standard-deviation ratio candidate/HR is > this or < 1/this")
    min_pixels: int = Field(16, ge=1, description="a measurement (flat area, edge band) needs at least this many pixels inside the mask")
    ratio_cap: float = Field(100.0, gt=1.0, description="ratios are clipped to [1/cap, cap] (a flat HR would make them unbounded)")


class TemplateConfig(_Config):
    """The deterministic template writer (``TemplateWriter``): its vocabulary is in
    ``dspo_core.feedback.template``; these bound and complete its output."""

    max_phrases: int = Field(6, ge=1, description="at most this many phrases per text (the first ones, in vocabulary order)")
    max_chars: int = Field(160, ge=20, description="texts are cut at a phrase (else word) boundary to at most this many characters; ~40 CLIP tokens, under the 77 limit")
    fallback_negative: str = Field("unnatural artifacts, unfaithful details", description="negative text when no attribute is flagged and the instance is no suspect")
    base_positive: str = Field("natural", description="first phrase of every positive text")
    fallback_positive: str = Field("clean texture faithful to the input", description="positive phrase used when no attribute asks for a specific one")
    include_label: bool = Field(True, description="prefix texts with the region label from the context (e.g. 'foliage, over-sharpened')")


Dtype = Literal["auto", "float32", "float16", "bfloat16"]
ModelClass = Literal["auto", "image-text-to-text", "vision2seq", "causal-lm"]
PromptStyle = Literal["auto", "blip", "git", "processor"]
CaptionerKind = Literal["captioner", "vlm"]


class CaptionerConfig(_Config):
    """A transformers image-to-text model used as captioner (``HFCaptioner``).

    Nothing is downloaded: ``model`` is a local folder written by ``save_pretrained``, or
    a Hub model id that must already be in the Hugging Face cache (``dspo models fetch``).
    With ``kind: vlm`` it is a chat VLM (``VLMCaptioner``): shown the loser crop it is asked
    what is wrong in the region, shown the HR crop what the region shows, each answer parsed
    from the line the prompt asks for; None prompts mean the documented ones in
    ``dspo_core.feedback.vlm``.
    """

    kind: CaptionerKind = Field("captioner", description="'captioner': an image-to-text captioner (HFCaptioner); 'vlm': a chat VLM asked what is wrong in the region, its answer parsed (VLMCaptioner)")
    model: str = Field(..., min_length=1, description="local folder (config.json + weights + processor files) or a Hub model id already in the HF cache")
    name: str | None = Field(None, description="name used in Feedback.source ('captioner:<name>'); default: the folder / model id's last part")
    cache_dir: str | None = Field(None, description="Hugging Face hub cache to look in for a model id (default: HF_HUB_CACHE)")
    revision: str | None = Field(None, description="revision of a cached model id (default: the cached 'main')")
    model_class: ModelClass = Field("auto", description="'auto': the class named in config.json's architectures, else AutoModelForImageTextToText (BLIP, GIT, Florence-2, VLMs), else AutoModelForCausalLM; 'vision2seq' uses AutoModelForVision2Seq where the installed transformers still has it")
    prompt_style: PromptStyle = Field("auto", description="how a prompt enters the model: 'blip' (processor text, [CLS] replaced by BLIP's bos), 'git' ([CLS] + prompt tokens, no [SEP]), 'processor' (processor(images, text), chat template applied when the processor has one); 'auto' picks from config.model_type")
    negative_prompt: str | None = Field(None, description="prompt for the loser crop; a caption prefix ('a photo of') for captioners, a question for VLMs; None: unconditional caption, or for kind 'vlm' its documented question (dspo_core.feedback.vlm.NEGATIVE_PROMPT)")
    positive_prompt: str | None = Field(None, description="prompt for the HR crop (same conventions; kind 'vlm': vlm.POSITIVE_PROMPT)")
    use_chat_template: bool = Field(True, description="wrap the prompt in the processor's chat template (with one image) when it has one")
    strip_prompt: bool = Field(True, description="return only the generated continuation, not the prompt tokens")
    max_new_tokens: int = Field(24, ge=1, le=512, description="generation length bound")
    num_beams: int = Field(3, ge=1, description="beam search width (greedy when 1); no sampling, so captions are deterministic")
    repetition_penalty: float = Field(1.0, gt=0.0, description="passed to generate")
    batch_size: int = Field(8, ge=1, description="crops per generate call")
    device: AnyDevice = Field("cpu", description="'cpu', 'cuda', 'cuda:N', or 'auto' (cuda when available)")
    dtype: Dtype = Field("float32", description="model weights dtype; 'auto' keeps the checkpoint's")
    trust_remote_code: bool = Field(False, description="allow custom modelling code stored with the model (never fetched)")


class FeedbackConfig(_Config):
    """How ``describe_feedback`` combines human text, a captioner and the template writer."""

    suspect: SuspectConfig = Field(default_factory=SuspectConfig, description="hallucination-suspect thresholds")
    measure: MeasureConfig = Field(default_factory=MeasureConfig, description="attribute-measurement thresholds")
    template: TemplateConfig = Field(default_factory=TemplateConfig, description="template writer options")
    append_template: bool = Field(True, description="with a captioner, append the template phrases to its captions (a plain caption rarely names the artifact)")
    fill_outside_mask: bool = Field(False, description="grey out pixels outside the mask before captioning a crop")
    max_chars: int = Field(240, ge=20, description="captioner (+ template) texts are cut at a word boundary to this many characters; human text is kept as written")

    @model_validator(mode="after")
    def _bounds(self) -> FeedbackConfig:
        if self.max_chars < self.template.max_chars:
            raise ValueError("max_chars must be >= template.max_chars")
        return self
