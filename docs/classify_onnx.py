# python classify_onnx.py model.standalone.onnx IMAGE...: classify with onnxruntime, pillow and numpy alone
import json
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
short, crop, classes = int(meta["resize_size"]), int(meta["input_size"]), json.loads(meta["classes"])
for path in sys.argv[2:]:
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize(size, Image.Resampling[meta["interpolation"].upper()])
    left, top = round((image.width - crop) / 2), round((image.height - crop) / 2)
    crops = np.asarray(image.crop((left, top, left + crop, top + crop)))[None]
    probabilities = session.run(None, {"images": crops})[0][0]
    print(f"{path}\t{classes[probabilities.argmax()]}\t{probabilities.max():.6f}")
