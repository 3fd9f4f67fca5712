"""Association policy: called AE, calling-AE allow-list, host binding."""

from __future__ import annotations

from pacs_node.config import AllowedCaller
from pacs_node.receive.policy import AssociationPolicy, RejectReason


def test_any_caller_when_no_allow_list() -> None:
    assert AssociationPolicy("PACS_NODE").check("WHOEVER", "PACS_NODE", "10.1.1.1") is None


def test_wrong_called_ae_is_rejected() -> None:
    assert AssociationPolicy("PACS_NODE").check("CT1", "ANY-SCP", "127.0.0.1") is RejectReason.CALLED_AE_NOT_RECOGNIZED


def test_allow_list_with_host_binding() -> None:
    policy = AssociationPolicy(
        "PACS_NODE", (AllowedCaller(ae_title="CT1", host="127.0.0.1"), AllowedCaller(ae_title="CT2"))
    )
    assert policy.check("CT1", "PACS_NODE", "127.0.0.1") is None
    assert policy.check("CT1", "PACS_NODE", "127.0.0.2") is RejectReason.CALLING_AE_NOT_RECOGNIZED
    assert policy.check("CT2", "PACS_NODE", "192.0.2.7") is None
    assert policy.check("CT3", "PACS_NODE", "127.0.0.1") is RejectReason.CALLING_AE_NOT_RECOGNIZED


def test_reject_reasons_follow_ps3_8() -> None:
    assert (RejectReason.CALLING_AE_NOT_RECOGNIZED.result, RejectReason.CALLING_AE_NOT_RECOGNIZED.source,
            RejectReason.CALLING_AE_NOT_RECOGNIZED.diagnostic) == (1, 1, 3)
    assert RejectReason.LOCAL_LIMIT_EXCEEDED.value == (2, 3, 2)
