"""DICOM results of one analysed CT series: the TID 1500 SR and the key images."""
