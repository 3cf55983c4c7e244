"""Reading and writing Caffe files: prototxt text, binary protos, weights."""
