#!/bin/sh
export kselftest_default_timeout=45
