"""MobileSAM point / box segmentation over onnxruntime: preprocessing, predictor, embedding cache,
engine, writers (PNG mask, overlay, COCO RLE / polygons)."""
