"""Choosing the prior among what a PACS answers: our own filtering, without a PACS."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from pacs_node.config import PriorSource, PriorsConfig
from pacs_node.priors import query
from pacs_node.priors.association import Cancel
from pacs_node.priors.query import CurrentStudy

CURRENT = CurrentStudy("1.2.100", "P1", "", "20260105", "120000")


def _identifier(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


class _FakeAssociation:
    """Answers C-FIND by level from canned identifiers."""

    def __init__(self, studies: list[Dataset], series: dict[str, list[Dataset]]) -> None:
        self.studies, self.series = studies, series
        self.queries: list[Dataset] = []

    def send_c_find(self, ds: Dataset, model: str):  # noqa: ANN201
        self.queries.append(ds)
        pending = _identifier(Status=0xFF00)
        if ds.QueryRetrieveLevel == "STUDY":
            answers = self.studies
        elif ds.QueryRetrieveLevel == "SERIES":
            answers = self.series.get(ds.StudyInstanceUID, [])
        else:
            answers = [_identifier(SOPInstanceUID=ds.SeriesInstanceUID + ".1")]
        for answer in answers:
            yield pending, answer
        yield _identifier(Status=0x0000), None


def _study(uid: str, date: str, time: str = "090000", patient: str = "P1", modalities: object = "CT") -> Dataset:
    return _identifier(StudyInstanceUID=uid, StudyDate=date, StudyTime=time, PatientID=patient,
                       ModalitiesInStudy=modalities)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_earlier_studies_of_the_patient_in_the_window_newest_first() -> None:
    studies = [
        _study("1.2.1", "20250102"),
        _study("1.2.2", "20260105", "080000", modalities=["CT", "SR"]),  # same day, earlier
        _study("1.2.3", "20260105", "130000"),                           # same day, later: not a prior
        _study("1.2.4", "20251201", patient="P2"),                       # someone else
        _study("1.2.5", "20251101", modalities="MR"),                    # no CT
        _study("1.2.6", "20200101"),                                     # before the window
        _study("1.2.100", "20260105", "080000"),                         # the current study itself
        _study("1.2.7", "20240101", modalities=""),                      # modalities not filled in: looked at
        _study("bad uid", "20250101"),
    ]
    fake = _FakeAssociation(studies, {})
    found = query._studies(fake, CURRENT, 5 * 365 + 1, Cancel())
    assert [uid for _, _, uid in found] == ["1.2.2", "1.2.1", "1.2.7"]
    asked = fake.queries[0]
    assert asked.PatientID == "P1" and asked.StudyDate == "20210105-20260105" and "IssuerOfPatientID" not in asked


def test_issuer_is_asked_when_the_study_has_one() -> None:
    fake = _FakeAssociation([], {})
    query._studies(fake, CurrentStudy("1.2.100", "P1", "HOSP-A", "20260105"), 30, Cancel())
    assert fake.queries[0].IssuerOfPatientID == "HOSP-A" and fake.queries[0].StudyDate == "20251206-20260105"


def test_the_newest_study_with_a_ct_series_and_our_sr(monkeypatch) -> None:  # noqa: ANN001
    studies = [_study("1.2.1", "20250601", modalities=""), _study("1.2.2", "20250101")]
    series = {
        "1.2.1": [_identifier(SeriesInstanceUID="1.2.1.1", Modality="MR", SeriesNumber=1)],
        "1.2.2": [
            _identifier(SeriesInstanceUID="1.2.2.1", Modality="CT", SeriesNumber=2, NumberOfSeriesRelatedInstances=60),
            _identifier(SeriesInstanceUID="1.2.2.2", Modality="CT", SeriesNumber=3, NumberOfSeriesRelatedInstances=240),
            _identifier(SeriesInstanceUID="1.2.2.9", Modality="SR", SeriesNumber=9901),
            _identifier(SeriesInstanceUID="1.2.2.8", Modality="SR", SeriesNumber=9901, Manufacturer="Other AI"),
        ],
    }
    fake = _FakeAssociation(studies, series)
    monkeypatch.setattr(query, "associate", lambda *args, **kwargs: fake)
    monkeypatch.setattr(query, "close", lambda *args: None)
    source = PriorSource(name="pacs", ae_title="PACS", host="h", port=104)
    prior = query.find_prior(source, CURRENT, PriorsConfig(), "PACS_NODE", Cancel())
    assert prior is not None
    assert (prior.study_uid, prior.study_date, prior.ct.series_uid, prior.ct.instances) == ("1.2.2", "20250101",
                                                                                           "1.2.2.2", 240)
    assert prior.our_sr is not None and (prior.our_sr.series_uid, prior.our_sr_uid) == ("1.2.2.9", "1.2.2.9.1")


def test_the_prior_series_passes_the_analysis_gate_or_an_older_study_is_taken(monkeypatch) -> None:  # noqa: ANN001
    studies = [_study("1.2.1", "20250601"), _study("1.2.2", "20250101")]

    def ct(uid: str, instances: int | None, thickness: str | None) -> Dataset:
        values = {"SeriesInstanceUID": uid, "Modality": "CT", "SeriesNumber": 2}
        if instances is not None:
            values["NumberOfSeriesRelatedInstances"] = instances
        if thickness is not None:
            values["SliceThickness"] = thickness
        return _identifier(**values)

    series = {
        "1.2.1": [ct("1.2.1.1", 3, None), ct("1.2.1.2", 60, "5.0")],  # a scout and a 5 mm series only
        "1.2.2": [ct("1.2.2.1", 120, "2.5"), ct("1.2.2.2", 300, "1.0"), ct("1.2.2.3", 400, None),
                  ct("1.2.2.4", 10, "0.6")],
    }
    fake = _FakeAssociation(studies, series)
    monkeypatch.setattr(query, "associate", lambda *args, **kwargs: fake)
    monkeypatch.setattr(query, "close", lambda *args: None)
    source = PriorSource(name="pacs", ae_title="PACS", host="h", port=104)
    prior = query.find_prior(source, CURRENT, PriorsConfig(), "PACS_NODE", Cancel(), query.SeriesGate(30, 3.0))
    assert prior is not None and prior.study_uid == "1.2.2"  # the newer study has nothing comparable
    assert prior.ct.series_uid == "1.2.2.2"  # thinnest with enough slices, not the one with most instances
    strict = query.SeriesGate(min_slices=500, max_slice_thickness_mm=3.0)
    assert query.find_prior(source, CURRENT, PriorsConfig(), "PACS_NODE", Cancel(), strict) is None
    unknown = query.SeriesGate().choose([query.RemoteSeries("1.9", "CT", 1, None, None)])
    assert unknown is not None  # a source that says nothing is given the benefit of the doubt
