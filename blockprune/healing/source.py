"""What gets healed: a saved pruned checkpoint, or a plan applied to its dense model.

Every check that can fail without weights runs in :func:`resolve_source` (config and plan JSON
only): a plan for another model, revision or layer count, a checkpoint whose plan differs from the
plan given beside it, a checkpoint whose layer count contradicts its own plan. Loading follows the
pruned checkpoint's own rule (stock ``from_pretrained`` for layer plans, ``load_pruned`` for
attention/MLP plans), and :func:`save_healed` writes the merged model so that it reloads the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.errors import BadInputError
from blockprune.models.adapters import adapter_for_config, text_config
from blockprune.models.apply import PLAN_FILE, PlanMismatchError
from blockprune.models.zoo import load_model, resolve_model
from blockprune.selection.plan import PrunePlan

HEALING_KEY = "blockprune_healing"  # config.json key of a healed model: what healing did


def _same_plan(a: PrunePlan, b: PrunePlan) -> bool:
    return (a.model_id, a.n_blocks, a.blocks, a.granularity) == (b.model_id, b.n_blocks, b.blocks, b.granularity)


def _describe(plan: PrunePlan) -> str:
    return f"{plan.model_id} {plan.granularity} plan dropping {list(plan.blocks)} of {plan.n_blocks}"


@dataclass(frozen=True)
class HealSource:
    """A validated input: ``pruned_path`` (a saved pruned checkpoint) or ``model`` (dense) + ``plan``."""

    plan: PrunePlan
    config: Any  # the config of the model that will be trained (pruned), for target-module checks
    pruned_path: str | None = None
    model: str | None = None
    model_path: str | None = None  # where the dense model's folder is (for a dense baseline)
    revision: str | None = None

    @property
    def fingerprint(self) -> str:
        """Identifies the base a checkpoint was trained on (plan + where the weights come from)."""
        where = self.pruned_path or f"{self.model}@{self.revision}"
        key = json.dumps({"plan": [self.plan.model_id, self.plan.n_blocks, list(self.plan.blocks),
                                   self.plan.granularity], "weights": where}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.pruned_path or self.model}: {_describe(self.plan)}"

    def tokenizer(self) -> Any:
        """The tokenizer, without loading weights."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.pruned_path or self.model_path)

    def load(self, dtype: str = "float32") -> tuple[Any, Any]:
        """(pruned model in train-ready eval mode, tokenizer)."""
        from transformers import AutoTokenizer

        if self.pruned_path is not None:
            from blockprune.models.apply import load_pruned

            return load_pruned(self.pruned_path, dtype=dtype), AutoTokenizer.from_pretrained(self.pruned_path)
        from blockprune.models.apply import apply_plan

        assert self.model is not None
        model, tok, _ = load_model(self.model, dtype=dtype)
        return apply_plan(model, self.plan), tok


def _check_plan_against_config(plan: PrunePlan, config: Any, where: str) -> None:
    n = adapter_for_config(config).n_layers(config)
    if plan.n_blocks != n:
        raise PlanMismatchError(f"{_describe(plan)} does not fit {where}, which has {n} layers")


def resolve_source(pruned: str | None = None, plan: str | PrunePlan | None = None,
                   model: str | None = None) -> HealSource:
    """Check the inputs against each other from configs and JSON only; raise before any weights load."""
    from transformers import AutoConfig

    if isinstance(plan, (str, Path)) and not Path(plan).is_file():
        raise BadInputError(f"plan file {plan} does not exist")
    given_plan = PrunePlan.load(plan) if isinstance(plan, (str, Path)) else plan
    if pruned is not None:
        path = Path(pruned)
        if not (path / "config.json").is_file():
            raise BadInputError(f"{pruned} is not a model folder (no config.json)")
        config = AutoConfig.from_pretrained(path)
        saved = getattr(config, "blockprune_plan", None)
        if not saved:
            raise PlanMismatchError(f"{pruned} is not a pruned checkpoint: its config.json carries no blockprune_plan "
                                    "(to heal a dense model, pass --model and --plan)")
        ck_plan = PrunePlan.from_dict(saved)
        if (path / PLAN_FILE).is_file() and not _same_plan(PrunePlan.load(path / PLAN_FILE), ck_plan):
            raise PlanMismatchError(f"{pruned}: {PLAN_FILE} and config.json disagree about the plan")
        if given_plan is not None and not _same_plan(given_plan, ck_plan):
            raise PlanMismatchError(f"plan mismatch: --plan is a {_describe(given_plan)}, but {pruned} was pruned "
                                    f"with a {_describe(ck_plan)}")
        if model is not None and model != ck_plan.model_id:
            raise PlanMismatchError(f"{pruned} was pruned from {ck_plan.model_id!r}, not {model!r}")
        n_now = adapter_for_config(config).n_layers(config)
        expect = ck_plan.n_blocks - ck_plan.n_prune if ck_plan.granularity == "layer" else ck_plan.n_blocks
        if n_now != expect:
            raise PlanMismatchError(f"{pruned} has {n_now} layers, but its {_describe(ck_plan)} leaves {expect}")
        return HealSource(plan=ck_plan, config=config, pruned_path=str(path.resolve()), model=ck_plan.model_id)
    if given_plan is None:
        raise BadInputError("nothing to heal: pass --pruned DIR, or --plan FILE (with --model)")

    name = model or given_plan.model_id
    if name != given_plan.model_id:
        raise PlanMismatchError(f"plan mismatch: the plan is for model {given_plan.model_id!r}, not {name!r}")
    resolved = resolve_model(name)
    if given_plan.revision is not None and resolved.revision not in (None, given_plan.revision):
        raise PlanMismatchError(f"plan mismatch: the plan is for revision {given_plan.revision!r} of {name!r}, "
                                f"the model here is {resolved.revision!r}")
    config = AutoConfig.from_pretrained(resolved.path)
    _check_plan_against_config(given_plan, config, name)
    return HealSource(plan=given_plan, config=_pruned_config(config, given_plan), model=name,
                      model_path=resolved.path, revision=resolved.revision)


def _pruned_config(config: Any, plan: PrunePlan) -> Any:
    """The dense config with the layer count a layer plan leaves (enough for target-module checks)."""
    if plan.granularity != "layer":
        return config
    import copy

    config = copy.deepcopy(config)
    adapter = adapter_for_config(config)
    setattr(text_config(config), adapter.n_layers_attr, plan.n_blocks - plan.n_prune)
    for key in adapter.per_layer_config_lists:
        values = getattr(text_config(config), key, None)
        if isinstance(values, (list, tuple)) and len(values) == plan.n_blocks:
            setattr(text_config(config), key, [values[i] for i in plan.kept])
    return config


def save_healed(model: Any, plan: PrunePlan, path: str | Path, tokenizer: Any, healing: dict[str, Any]) -> Path:
    """Save the merged model exactly as ``save_pruned`` saves a pruned one, plus what healing did."""
    from blockprune.models.apply import save_pruned

    model.config.blockprune_plan = plan.to_dict()
    setattr(model.config, HEALING_KEY, healing)
    return save_pruned(model, plan, path, tokenizer)
