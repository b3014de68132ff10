"""Capacity planning without weights: which (tp, dp) shapes fit on which devices, the
reasons, and the checks that refuse a shape before anything is stopped. Data only;
rendering it is the CLI's and the dashboard's business."""
