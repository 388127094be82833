"""The data contract shared by all sources: manifest, annotations, image cache."""
