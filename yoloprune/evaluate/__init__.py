"""Accuracy: ``coco`` evaluates PyTorch models and ONNX files with pycocotools on YOLO or COCO datasets."""
