"""Attack registry: ``attack=<name>`` in a run or in ``python -m fedsim attack``.

Every attack observes one client's round (:class:`base.ClientView`) and returns leakage metrics
and, where it reconstructs images, the images for the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from fedsim.errors import ConfigError, build_option
from fedsim.params import spec
from fedsim.privacy.attacks.base import Attack
from fedsim.privacy.attacks.gradient_inversion import APRIL, DLG, AnalyticFC, InvertingGradients
from fedsim.privacy.attacks.membership import MembershipInference
from fedsim.privacy.attacks.shared_features import SharedFeatureInversion
from fedsim.privacy.attacks.shared_statistics import StatisticsInversion
from fedsim.privacy.attacks.update_leakage import UpdateLeakage

# Gradient-inversion methods (they attack model updates through UpdateLeakage).
INVERSIONS: dict[str, Callable[..., Any]] = {
    "analytic": AnalyticFC,
    "april": APRIL,
    "dlg": DLG,
    "idlg": lambda **kw: DLG(idlg=True, **kw),
    "inverting_gradients": InvertingGradients,
}
# Attacks on other shared information.
OBSERVERS: dict[str, type[Attack]] = {
    "feature_inversion": SharedFeatureInversion,
    "statistics_inversion": StatisticsInversion,
    "membership": MembershipInference,
}


@dataclass(kw_only=True)
class AttackSchedule:
    """Keys of the attack group that select when and whom to attack, not how."""

    name: str = spec("attack")
    every: int = spec("attack every N-th round", ge=1, default=1)
    clients: list[int] | None = spec("client ids attacked; null = every sampled client", ge=0, default=None)
    num_images: int = spec("images per attacked client", ge=1, default=1)
    lpips_home: str | None = spec("folder of the LPIPS weights (offline)", default=None)
    final_model: bool = spec(
        "attack the final global model through single-image gradients instead of the round updates "
        "(fedsim.privacy.audit)",
        default=False,
    )

    @staticmethod
    def validate_run(cfg: Any) -> str | None:
        """The final-model audit inverts gradients."""
        if cfg.attack.get("final_model") and str(cfg.attack.name) not in INVERSIONS:
            return (
                f"attack.final_model=true needs a gradient inversion (one of {', '.join(sorted(INVERSIONS))}); "
                f"attack={cfg.attack.name} observes what clients share during the rounds"
            )
        return None


SCHEDULE_KEYS = tuple(f.name for f in fields(AttackSchedule))


def attack_schemas(name: str) -> tuple[type, type]:
    """(the schedule schema, the schema of the attack's own keys: its class) of attack ``name``."""
    if name in INVERSIONS:
        schema = DLG if name == "idlg" else INVERSIONS[name]  # idlg's builder is DLG with idlg=True
        assert isinstance(schema, type)
        return AttackSchedule, schema
    if name in OBSERVERS:
        return AttackSchedule, OBSERVERS[name]
    raise ConfigError(f"unknown attack '{name}': choose one of {', '.join(sorted({**INVERSIONS, **OBSERVERS}))}")


def inversion_from_options(name: str, options: dict[str, Any]):
    """The gradient inversion ``name`` with its ``options``."""
    if name not in INVERSIONS:
        raise ConfigError(f"unknown gradient inversion '{name}': choose one of {', '.join(sorted(INVERSIONS))}")
    return build_option("attack", name, INVERSIONS[name], **options)


def inversion_from_config(attack_cfg: Any) -> Any:
    """The gradient inversion ``attack_cfg`` names, with the group's keys other than the schedule's as its options."""
    return inversion_from_options(
        str(attack_cfg.name), {k: v for k, v in dict(attack_cfg).items() if k not in SCHEDULE_KEYS}
    )


def attack_from_config(attack_cfg: Any, seed: int) -> Attack:
    """The attack ``attack_cfg`` names, with the group's other keys as its options."""
    name = str(attack_cfg.name)
    options = {k: v for k, v in dict(attack_cfg).items() if k not in SCHEDULE_KEYS}
    if name in INVERSIONS:
        return UpdateLeakage(
            inversion_from_config(attack_cfg), int(attack_cfg.num_images), seed, attack_cfg.get("lpips_home")
        )
    if name in OBSERVERS:
        return build_option("attack", name, OBSERVERS[name], seed=seed, **options)
    raise ConfigError(f"unknown attack '{name}': choose one of {', '.join(sorted({**INVERSIONS, **OBSERVERS}))}")
