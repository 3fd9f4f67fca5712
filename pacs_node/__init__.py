"""pacs-node: a DICOM node that finds lung nodules on chest CT and reports them to PACS."""

__version__ = "0.1.0"
