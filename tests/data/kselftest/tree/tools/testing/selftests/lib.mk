# The emit_tests rule of the kernel's tools/testing/selftests/lib.mk (what writes
# kselftest-list.txt), for the project's tests.
emit_tests:
	for TEST in $(TEST_GEN_PROGS) $(TEST_CUSTOM_PROGS) $(TEST_PROGS); do \
		BASENAME_TEST=`basename $$TEST`;	\
		echo "$(COLLECTION):$$BASENAME_TEST";	\
	done
