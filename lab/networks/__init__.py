"""The networks: backbones (hand-written and derived from Keras), classifiers, optimizers, Adam, and training them."""
