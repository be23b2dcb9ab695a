"""Data: Fashion-MNIST and image folders for classification, COCO / VOC folders and the
generated scene sets for detection and segmentation, preprocessing and calibration images."""
