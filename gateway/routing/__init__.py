"""Routing: which registered AI devices get which series of a completed study, and why.

``configs/routing.yaml`` holds an ordered list of rules. Each rule names the study type it
identifies (НСИ 1471) and conditions on the series and the study; the first rule whose
conditions all hold claims a series. The devices for a claimed series are those enabled for
the study's region that serve the rule's study type and whose manifest ``accepts`` the
series (modality, body part, slice thickness, images, adult only, photometric): the router
never sends a device what it cannot read. Within a study one series is chosen per device
and study type (the thinnest axial CT series, the frontal chest image), or — for
mammography — every accepted series goes into one job for the whole study.

Everything here is pure: :func:`route` takes facts, rules and manifests and returns a
decision that says, per series and rule, what matched or the first condition that failed
with the values seen. ``aigw rules test FILE...`` (:mod:`gateway.cli.rules`) prints the
same explanation for files.

Modules
-------
rules
    The YAML schema, :class:`RoutingRules`, :func:`load_rules`.
facts
    :class:`StudyFacts` / :class:`SeriesFacts` from the index or from DICOM headers.
match
    One rule's conditions against one series.
route
    Series skipping, rule claims, device acceptance, series selection: :func:`route`.
explain
    :func:`explain_files`: routing explained for DICOM files.
"""

from gateway.routing.explain import (
    DEFAULT_DEVICES,
    DEFAULT_RULES,
    explain_files,
    load_devices,
)
from gateway.routing.facts import (
    RoutingError,
    SeriesFacts,
    StudyFacts,
    facts_from_datasets,
    facts_from_index,
)
from gateway.routing.route import (
    DeviceCheck,
    PlannedJob,
    RoutingDecision,
    RuleExplanation,
    SeriesNote,
    route,
)
from gateway.routing.rules import (
    BodyPartCondition,
    Conditions,
    ImageTypeCondition,
    NumberRange,
    Priority,
    RoutingConfigError,
    RoutingRules,
    Rule,
    Selection,
    SkipSettings,
    load_rules,
)

__all__ = [
    "DEFAULT_DEVICES",
    "DEFAULT_RULES",
    "BodyPartCondition",
    "Conditions",
    "DeviceCheck",
    "ImageTypeCondition",
    "NumberRange",
    "PlannedJob",
    "Priority",
    "RoutingConfigError",
    "RoutingDecision",
    "RoutingError",
    "RoutingRules",
    "Rule",
    "RuleExplanation",
    "Selection",
    "SeriesFacts",
    "SeriesNote",
    "SkipSettings",
    "StudyFacts",
    "explain_files",
    "facts_from_datasets",
    "facts_from_index",
    "load_devices",
    "load_rules",
    "route",
]
