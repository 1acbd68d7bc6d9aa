"""The seed tutorial's task: MNIST with the host seeing the left half of each image and the
collaborator the right half. Corrected: aligned shuffle, dimensions, data location."""
