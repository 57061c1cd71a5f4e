"""Container and safetensors input and output."""
