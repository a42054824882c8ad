"""The gate before deploy: a model reaches the endpoint only if its test macro-F1 is at
least a floor and at least the current champion's minus a tolerance."""
from __future__ import annotations

# Per preset: the floor a model must reach to be served. `quick` trains for a minute and
# only has to prove the pipeline works, so it has none.
DEFAULT_FLOOR = 75.0
PRESET_FLOORS = {"default": DEFAULT_FLOOR, "quality": DEFAULT_FLOOR, "quick": 0.0}
DEFAULT_TOLERANCE = 1.0  # macro-F1 points; seeds alone move test macro-F1 by about 0.5 (sd)


def decide(macro_f1: float, floor: float, tolerance: float, champion: dict | None) -> dict:
    """Returns {passed, reason, floor, tolerance, champion_version, champion_macro_f1}."""
    if floor < 0 or tolerance < 0:
        raise ValueError(f"gate floor and tolerance must be >= 0 (got {floor}, {tolerance})")
    decision = {"floor": floor, "tolerance": tolerance, "macro_f1": round(macro_f1, 2),
                "champion_version": None, "champion_macro_f1": None}
    reasons, passed = [], True
    if macro_f1 >= floor:
        reasons.append(f"test macro-F1 {macro_f1:.2f} >= floor {floor:.2f}")
    else:
        passed = False
        reasons.append(f"test macro-F1 {macro_f1:.2f} is below the floor {floor:.2f}")
    champion_f1 = None
    if champion and "test_macro_f1" in champion.get("tags", {}):
        champion_f1 = float(champion["tags"]["test_macro_f1"])
        decision.update(champion_version=champion["version"], champion_macro_f1=champion_f1)
        bar = champion_f1 - tolerance
        if macro_f1 >= bar:
            reasons.append(f">= champion v{champion['version']} ({champion_f1:.2f}) - tolerance {tolerance:.2f} = {bar:.2f}")
        else:
            passed = False
            reasons.append(
                f"below champion v{champion['version']} ({champion_f1:.2f}) - tolerance {tolerance:.2f} = {bar:.2f}"
            )
    else:
        reasons.append("no champion yet")
    decision["passed"] = passed
    decision["reason"] = ("passed: " if passed else "failed: ") + "; ".join(reasons)
    return decision


def report_section(decision: dict, deploy_requested: bool = True) -> str:
    verdict = "PASSED" if decision["passed"] else "FAILED"
    consequence = (
        "this model is promoted to `champion` and deployed" if decision["passed"] and deploy_requested
        else "this model is promoted to `champion` (deploy was not requested)" if decision["passed"]
        else "this model is registered but not promoted, and it is not deployed"
    )
    return (
        f"\n## Gate: {verdict}\n\n{decision['reason']}.\n\nConsequence: {consequence}. "
        f"(Floor {decision['floor']:.1f}, tolerance {decision['tolerance']:.1f} macro-F1 points.)\n"
    )
