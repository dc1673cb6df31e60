/*
 * kmx-progress MARK [MESSAGE]: mirrors a test runner's progress where the host can still read
 * it after the guest went down.
 *
 * With MESSAGE, it writes "MARK: MESSAGE". Without, it copies standard input to standard
 * output line by line and mirrors each progress line (a KTAP result "ok N"/"not ok N", a
 * kselftest "selftests: " header, a "# Subtest: ") as "MARK: LINE".
 *
 * A mirrored line goes first to the console, and the program waits until the UART has sent
 * it (tcdrain), then to the kernel log (/dev/kmsg, at KERN_INFO). A panic can come from the
 * kernel-log copy itself (a test waiting for it), or right after it: written to the tty
 * alone, the line could still sit in the driver's transmit buffer, which a panic never sends.
 * Once drained, it is in QEMU's console log whatever happens next.
 *
 * One process for the whole run: under TCG, the shell loop it replaces read its input one
 * byte per system call. Built static (musl) by the image recipe.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

/* /dev/kmsg takes a record of at most 1024 bytes less its header (LOG_LINE_MAX on 6.1). */
#define KMSG_TEXT_MAX 900
#define MARK_MAX 100

static int console_fd = -1;
static const char *mark;

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n <= 0)
			return; /* a missing console or log loses the mirror, never the run */
		buf += n;
		len -= (size_t)n;
	}
}

static void mirror(const char *text, size_t len)
{
	char line[KMSG_TEXT_MAX + MARK_MAX + 16]; /* "<6>MARK: TEXT\n" always fits */
	int n, fd;

	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		len--;
	if (len > KMSG_TEXT_MAX)
		len = KMSG_TEXT_MAX;
	if (console_fd >= 0) {
		n = snprintf(line, sizeof(line), "%s: %.*s\n", mark, (int)len, text);
		write_all(console_fd, line, (size_t)n);
		tcdrain(console_fd); /* fails harmlessly (ENOTTY) when the console is no tty */
	}
	/*
	 * Opened for each line: the kernel rate-limits writes to /dev/kmsg per open file (10
	 * records in 5 s), and a program's results come in a burst when it exits (its output is
	 * a pipe, so block-buffered). Held open, the mirror lost all but the first ten.
	 */
	fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = snprintf(line, sizeof(line), "<6>%s: %.*s\n", mark, (int)len, text);
		write_all(fd, line, (size_t)n); /* one write, one record */
		close(fd);
	}
}

/* The shell patterns it replaces: *"ok "[0-9]*, *"selftests: "*, *"# Subtest: "*. */
static int is_progress(const char *l)
{
	const char *p;

	for (p = strstr(l, "ok "); p; p = strstr(p + 1, "ok "))
		if (p[3] >= '0' && p[3] <= '9')
			return 1;
	return strstr(l, "selftests: ") != NULL || strstr(l, "# Subtest: ") != NULL;
}

int main(int argc, char **argv)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (argc < 2 || argc > 3) {
		fputs("usage: kmx-progress MARK [MESSAGE]\n", stderr);
		return 2;
	}
	mark = argv[1];
	if (strlen(mark) > MARK_MAX) {
		fprintf(stderr, "kmx-progress: MARK is longer than %d bytes\n", MARK_MAX);
		return 2;
	}
	console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (argc == 3) {
		mirror(argv[2], strlen(argv[2]));
		return 0;
	}
	while ((n = getline(&line, &cap, stdin)) > 0) {
		fwrite(line, 1, (size_t)n, stdout);
		if (line[n - 1] != '\n')
			fputc('\n', stdout); /* as the shell loop did: every line ends */
		fflush(stdout); /* the output so far stays when the guest goes down */
		if (is_progress(line))
			mirror(line, (size_t)n);
	}
	free(line);
	return 0;
}
