"""Payload codecs: Cayenne LPP and the denen node frame."""
