/*
 * kmx-kmsg [-r] SEQ: prints the kernel log records whose sequence number is SEQ or later, as
 * /dev/kmsg gives them ("PRIO,SEQ,USEC,FLAGS[,caller=T1];text", continuation lines start with
 * a space), without waiting for new ones, then one line
 * "#kmx-kmsg next=N first=F lost=L": N is the sequence number the next record will get (the
 * mark to read from next time), F the first record this call read (or N), L how many records
 * from SEQ on were overwritten before they could be read (the ring buffer wrapped).
 *
 * Sequence numbers, not timestamps, mark the log: they are the kernel's own order, and they
 * are there whatever printk.time says.
 *
 * Under TCG each read() of /dev/kmsg (one record per call) costs a lot, so the guest agent
 * keeps /dev/kmsg open on a descriptor handed to this program as its standard input: its
 * position is where the last call stopped, and a call reads only the records printed since.
 * -r rewinds to the oldest record first (SEQ is behind that position). When standard input
 * is not /dev/kmsg, the program opens it and reads from the oldest record.
 *
 * -f ID frames the output as the agent's reply to request ID (KMX-OUT/KMX-ERR/KMX-END with
 * base64 payloads, see images/agent), so the agent can run this program directly for a
 * KMX-KMSG request: one process per read instead of a shell, base64 and timeout.
 * Built static (musl) by the image recipe.
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* A record is at most 8 KiB of text (CONSOLE_EXT_LOG_MAX) plus its escaped header. */
#define RECORD_MAX 16384

static unsigned long long record_seq(const char *rec)
{
	const char *comma = strchr(rec, ',');

	return comma ? strtoull(comma + 1, NULL, 10) : 0;
}

/* The output, kept in memory when it is framed (base64 needs it whole). */
static char *out;
static size_t out_len, out_cap;
static const char *frame_id;

static int fail(int code, const char *what);

static void emit(const char *data, size_t len)
{
	if (!frame_id) {
		fwrite(data, 1, len, stdout);
		return;
	}
	if (out_len + len > out_cap) {
		size_t cap = out_cap ? out_cap * 2 : 65536;
		char *grown;

		while (cap < out_len + len)
			cap *= 2;
		grown = realloc(out, cap);
		if (!grown) {
			exit(fail(3, "out of memory"));
		}
		out = grown;
		out_cap = cap;
	}
	memcpy(out + out_len, data, len);
	out_len += len;
}

static void base64_lines(const char *data, size_t len)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i, col = 0;

	for (i = 0; i < len; i += 3) {
		unsigned int v = (unsigned char)data[i] << 16;
		char q[4];

		if (i + 1 < len)
			v |= (unsigned char)data[i + 1] << 8;
		if (i + 2 < len)
			v |= (unsigned char)data[i + 2];
		q[0] = tab[(v >> 18) & 63];
		q[1] = tab[(v >> 12) & 63];
		q[2] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
		q[3] = i + 2 < len ? tab[v & 63] : '=';
		fwrite(q, 1, 4, stdout);
		col += 4;
		if (col >= 76) {
			putchar('\n');
			col = 0;
		}
	}
	if (col)
		putchar('\n');
}

/* Exits with status code after saying why, framed as an agent reply when asked to. */
static int fail(int code, const char *what)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "kmx-kmsg: %s: %s\n", what, strerror(errno));
	if (!frame_id) {
		fputs(msg, stderr);
		return code;
	}
	printf("KMX-OUT %s\n\nKMX-ERR %s\n", frame_id, frame_id);
	base64_lines(msg, strlen(msg));
	printf("\nKMX-END %s %d\n", frame_id, code);
	fflush(stdout);
	return code;
}

/* /dev/kmsg is character device 1:11. */
static int is_kmsg(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 &&
	       minor(st.st_rdev) == 11;
}

int main(int argc, char **argv)
{
	static char rec[RECORD_MAX + 1];
	char tail[96];
	int rewind = 0, seen = 0, fd = 0, opt;
	unsigned long long from, next, first = 0, lost = 0;

	while ((opt = getopt(argc, argv, "rf:")) != -1) {
		if (opt == 'r')
			rewind = 1;
		else if (opt == 'f')
			frame_id = optarg;
		else
			return 2;
	}
	from = optind < argc ? strtoull(argv[optind], NULL, 10) : 0;
	next = from;
	/* The agent runs this without its usual `timeout`: a guest-side deadline of its own. */
	alarm(20);

	if (is_kmsg(0)) {
		int flags = fcntl(0, F_GETFL);

		if (flags < 0 || fcntl(0, F_SETFL, flags | O_NONBLOCK) < 0)
			return fail(2, "fcntl");
		if (rewind && lseek(0, 0, SEEK_SET) < 0)
			return fail(2, "lseek");
	} else {
		fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			return fail(2, "/dev/kmsg");
	}
	for (;;) {
		ssize_t n = read(fd, rec, RECORD_MAX);

		if (n < 0 && (errno == EPIPE || errno == EINTR))
			continue; /* EPIPE: overwritten under us; the next read gets the oldest left */
		if (n <= 0)
			break; /* EAGAIN: no more records */
		rec[n] = '\0';
		unsigned long long seq = record_seq(rec);

		if (!seen) {
			first = seq;
			seen = 1;
			if (seq > from)
				lost = seq - from;
		}
		/* After a snapshot restore the log can be behind SEQ: next is then below it. */
		next = seq + 1;
		if (seq < from)
			continue;
		if (rec[n - 1] != '\n')
			rec[n++] = '\n';
		emit(rec, (size_t)n);
	}
	if (!seen)
		first = next;
	snprintf(tail, sizeof(tail), "#kmx-kmsg next=%llu first=%llu lost=%llu\n", next, first,
		 lost);
	emit(tail, strlen(tail));
	if (frame_id) {
		printf("KMX-OUT %s\n", frame_id);
		base64_lines(out, out_len);
		printf("\nKMX-ERR %s\n\nKMX-END %s 0\n", frame_id, frame_id);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}
