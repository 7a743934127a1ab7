"""The engine process and its client: loaded models shared by every HTTP worker of a machine."""
