"""Where images come from: loading, dataset specs, the image cache, the embedded sample, the network probe."""
