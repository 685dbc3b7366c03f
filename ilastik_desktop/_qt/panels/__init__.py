"""The side panel's tabs and their widgets."""
