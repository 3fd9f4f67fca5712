"""Comparison of a study with the patient's prior: registration of the prior CT to the
current one (:mod:`.register`) and matching of their nodules (:mod:`.match`).

Positions are patient coordinates (LPS, mm) of each study's own frame; a
:class:`~.register.Registration` maps the prior's frame onto the current one.
"""

from pacs_node.compare.match import Match, Matching, MatchParams, NoduleSite, match_nodules
from pacs_node.compare.register import Registration, RegistrationParams, register

__all__ = ["Match", "MatchParams", "Matching", "NoduleSite", "Registration", "RegistrationParams", "match_nodules",
           "register"]
