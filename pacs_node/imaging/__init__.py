"""CT images and what is found in them, shared by ``analyze`` and ``ml``.

``volume`` (DICOM series or LUNA16 MetaImage → HU volume with its LPS affine),
``luna16`` (the LUNA16 file formats) and ``findings`` (Finding, nodule type,
Lung-RADS).  This package sits below both ``analyze`` and ``ml`` and imports
neither; ``ml`` imports it and never ``analyze`` (``tests/test_layering.py``).
"""
