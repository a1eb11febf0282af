"""What both engines share, one copy each (as Keras's own `backend/common/`)."""
