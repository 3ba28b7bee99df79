"""Data: discovery of class folders, the stratified split, image loading, transforms and the datamodule."""
