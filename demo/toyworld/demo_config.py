"""What a demo run is: its models, prompt sets, sizes (full and --smoke) and the folders it writes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from altadapter.data.images import check_resolution
from toyworld.base_config import ToyBaseConfig

TOY_BASE = ToyBaseConfig()  # the toy base samples with DDIM at this guidance scale


@dataclass(frozen=True)
class ModelSpec:
    """An evaluated model: the original (no kind), or an adapter run and what it trains with beyond its kind."""

    kind: str | None = None  # adapter kind; None: the original model
    preserve: bool = False  # --preserve_weight on base-world prompts
    tag_dropout: bool = False  # --caption_tag_dropout_rate DemoConfig.mlp_tag_dropout_rate
    # Without --enable_bucket even where the demo's runs have it: non-square pictures are centre-cropped.
    center_crop: bool = False


# Evaluated models, in table order. No preserving vocab run: a vocab adapter cannot change a prompt without
# its tags, so it has nothing to keep. The two MLP variants differ from "mlp" in one flag each, for issue
# #20's questions: does tag dropout close the gap between short and long prompts, and do buckets beat
# centre crops on non-square pictures.
MODELS: dict[str, ModelSpec] = {
    "original": ModelSpec(),
    "mlp": ModelSpec("mlp"),
    "prompt": ModelSpec("prompt"),
    "vocab": ModelSpec("vocab"),
    "lora": ModelSpec("lora"),
    "mlp_preserve": ModelSpec("mlp", preserve=True),
    "prompt_preserve": ModelSpec("prompt", preserve=True),
    "lora_preserve": ModelSpec("lora", preserve=True),
    "mlp_tag_dropout": ModelSpec("mlp", tag_dropout=True),
    "mlp_center_crop": ModelSpec("mlp", center_crop=True),
}
ADAPTER_MODELS = tuple(name for name, spec in MODELS.items() if spec.kind is not None)


@dataclass(frozen=True)
class PromptSet:
    """An evaluation prompt set: the prompt list of demo/make_toy_domain.py it reads, and at which size."""

    file: str
    wide: bool = False  # at DemoConfig's wide_width x wide_height instead of the size of the other sets


# Prompt sets, in table order.
PROMPT_SETS = {
    "domain_short": PromptSet("domain_prompts_short.txt"),
    "domain_long": PromptSet("domain_prompts_long.txt"),
    "base_world": PromptSet("base_prompts.txt"),
    "domain_long_wide": PromptSet("domain_prompts_long.txt", wide=True),
}
SHEET_PROMPTS = 12  # prompts per evaluation sample sheet
SHARES = ("nonsquare_share",)  # fractions in [0, 1): 0 turns them off
RATES = ("mlp_tag_dropout_rate",)  # fractions in (0, 1): 0 would make the variant its plain run


@dataclass(frozen=True)
class DemoConfig:
    """Every size, count and step of a demo run; the defaults fit 15 minutes on 2 CPU cores."""

    model_path: str = "demo/toy_base"
    work_dir: str = "demo_out"
    images_dir: str = "images"
    seed: int = 0
    models: tuple[str, ...] = ADAPTER_MODELS  # adapter runs to train and evaluate; the original always is
    num_train: int = 900  # training images, 10 per attribute combination
    num_heldout: int = 45  # held-out domain images: the training scripts' --validation_dir
    grid_prompts: int = 6  # prompts_generator.py prompts rendered into the write-up's grids
    grid_images: int = 4
    grid_steps: int = 20
    max_train_steps: int = 3000  # per adapter, the same for every kind
    batch_size: int = 16
    # Each kind's learning rate is the best of a sweep on the committed base (README, Results).
    mlp_learning_rate: float = 5e-3
    prompt_learning_rate: float = 1e-2
    vocab_learning_rate: float = 1e-2
    lora_learning_rate: float = 3e-3
    # Two layers: the toy's conditioning is 64 wide, where one Linear (4,160 parameters) learned the shape
    # tags but not the colours in the same steps (README, Results); m9's single layer is 768 wide.
    num_layers: int = 2
    # The write-up's 100 vectors were sized for m9's 512 positions; the toy has 64, of which the longest
    # domain caption takes 46: 16 vectors keep the same share of the positions beside it (~1/4).
    num_prompts: int = 16
    num_tags: int = 64  # more than the toy domain has (41), so every tag of the dataset gets its vector
    rank: int = 4
    # A quarter of the toy domain's pictures are 2:1 or 1:2, and every run trains them in aspect-ratio
    # buckets (--enable_bucket) rather than square crops; 0 and False give the all-square demo.
    nonsquare_share: float = 0.25
    enable_bucket: bool = True
    # The mlp_tag_dropout run's --caption_tag_dropout_rate (a placeholder until a sweep picks it).
    mlp_tag_dropout_rate: float = 0.2
    preserve_weight: float = 1.0
    preserve_prompts: int = 180  # base-world prompts for the penalty, none of them among the evaluation's
    eval_prompts: int = 90  # prompts per evaluation set: one per attribute combination
    eval_images: int = 1  # pictures per evaluation prompt and model
    eval_steps: int = 20
    eval_width: int | None = None  # of the evaluation pictures; None: the base's own size
    eval_height: int | None = None
    # The wide set's pictures: the bucket that the domain's 2:1 pictures train at (--resolution 32 has no
    # 2:1 bucket; 40x24 is the nearest). The frozen UNet only ever learned 32x32, and it draws base-world
    # prompts 77% right at 40x24 but 43% at 48x24 (2:1), 60% at 64x32 (30 prompts each, 100% at 32x32):
    # at 40x24 an adapter's gain or loss is less hidden by what the base cannot draw.
    wide_width: int = 40
    wide_height: int = 24
    guidance_scale: float = TOY_BASE.guidance_scale
    loss_images: int = 45  # held-out pictures of each evaluation loss: base world; domain, 2:1 and 1:2
    jobs: int = 2  # commands run side by side
    device: str = "cpu"  # of the evaluation; the scripts choose their own (accelerate, --device auto)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name in SHARES:
                if not 0 <= value < 1:
                    raise ValueError(f"{name} must be in [0, 1), got {value}")
            elif name in RATES:
                if not 0 < value < 1:
                    raise ValueError(f"{name} must be in (0, 1), got {value}")
            elif isinstance(value, float) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
            elif isinstance(value, int) and not isinstance(value, bool):
                least = 0 if name == "seed" else 1
                if value < least:
                    raise ValueError(f"{name} must be at least {least}, got {value}")
        unknown = [name for name in self.models if name not in ADAPTER_MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be some of {', '.join(ADAPTER_MODELS)}, got {list(self.models)}")
        if (self.eval_width is None) != (self.eval_height is None):
            raise ValueError("eval_width and eval_height: give both or neither")
        for name in ("eval_width", "eval_height", "wide_width", "wide_height"):
            if getattr(self, name) is not None:
                check_resolution(getattr(self, name), name)


# The --smoke sizes: every stage and artefact, seconds of compute (the end-to-end test runs these).
SMOKE = {
    "num_train": 12,
    "num_heldout": 4,
    "grid_prompts": 2,
    "grid_images": 1,
    "grid_steps": 2,
    "max_train_steps": 2,
    "batch_size": 2,
    "num_prompts": 4,
    "preserve_prompts": 6,
    "eval_prompts": 3,
    "eval_steps": 2,
    "eval_width": 48,  # non-square: the classifier reads any size
    "eval_height": 32,
    "loss_images": 3,
}


@dataclass
class DemoPaths:
    """Where each stage writes, under the work and images folders."""

    work: Path
    images: Path
    domain: Path = field(init=False)  # make_toy_domain.py output: train/, heldout/, prompt lists
    data: Path = field(init=False)
    heldout_data: Path = field(init=False)
    prompts: Path = field(init=False)  # prompts_generator.py output, rendered into the grids
    preserve_prompts: Path = field(init=False)
    runs: Path = field(init=False)
    base_heldout: Path = field(init=False)
    nonsquare_heldout: Path = field(init=False)  # 2:1 and 1:2 domain pictures for a loss in buckets
    logs: Path = field(init=False)
    samples: Path = field(init=False)

    def __post_init__(self) -> None:
        self.domain = self.work / "toy_domain"
        self.data = self.work / "data"
        self.heldout_data = self.work / "heldout_data"
        self.prompts = self.work / "prompts.txt"
        self.preserve_prompts = self.work / "preserve_prompts.txt"
        self.runs = self.work / "runs"
        self.base_heldout = self.work / "base_world_heldout"
        self.nonsquare_heldout = self.work / "domain_nonsquare_heldout"
        self.logs = self.work / "logs"
        self.samples = self.images / "samples"  # evaluation sheets, beside the grids the README shows

    def adapter(self, model: str) -> Path:
        """The adapter file of an evaluated model's run: RUNS/toy-NAME/toy-NAME.safetensors."""
        name = "toy-" + model.replace("_", "-")
        return self.runs / name / f"{name}.safetensors"
