"""Datasets: the stored cache and its index, splits and labels, ingest, and decoding of DICOM and other images."""
