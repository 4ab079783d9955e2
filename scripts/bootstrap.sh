#!/bin/sh
# placeholder __SKIFF_COORDINATOR__
