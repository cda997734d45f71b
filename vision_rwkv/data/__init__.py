"""Datasets: the embedded procedural Shapes data (images, labels, captions, masks) and file-based classification
datasets (ImageFolder trees, CSV lists) that skip unreadable images. See ``shapes.py`` and ``folder.py``."""
from .folder import IMG_EXTENSIONS, CsvImageDataset, ImageFolderDataset, load_rgb
from .shapes import (BACKGROUND_NAMES, CLASS_NAMES, COLOR_NAMES, DEFAULT_LENGTHS, POSITION_NAMES, SEG_CLASS_NAMES,
                     SIZE_NAMES, ZERO_SHOT_TEMPLATES, ShapesCaptions, ShapesClassification, ShapesDataset,
                     ShapeSample, ShapesSegmentation, collate_captions, make_sample)
