"""What one run trains: the model, the data and the Lightning module."""
