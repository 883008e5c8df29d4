"""The problem (model + weights + data + loss) and the exact HVP engine over it."""
